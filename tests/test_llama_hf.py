"""Llama/Qwen3 checkpoints <-> shoshin's llama arch, against real transformers on tiny random
checkpoints built locally: logits equal both ways (GQA, tied and untied, QK-norm on and off), a
LoRA fine-tune whose exports load in transformers and peft, fine-tuning a checkpoint with a padded
embedding (GPT-2 and Llama), and one-line errors for what shoshin cannot run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from hf_tiny import gpt2_tokenizer, make_gpt2, make_llama, write_chat

import shoshin
from shoshin.config import ModelConfig, load_config
from shoshin.data.chat import render_chat
from shoshin.data.tokenizers import CHAT_TOKENS, BpeTokenizer
from shoshin.errors import ShoshinError
from shoshin.interop.export import export, write_transformers
from shoshin.interop.hf import load_checkpoint
from shoshin.models import build_model
from shoshin.training.finetune import finetune

transformers = pytest.importorskip("transformers")

SHAPES = {
    "llama-gqa-untied": dict(qwen3=False, tie=False, n_kv_head=2),
    "llama-mha-tied": dict(qwen3=False, tie=True, n_kv_head=4),
    "qwen3-gqa-untied": dict(qwen3=True, tie=False, n_kv_head=1),
    "qwen3-gqa-tied": dict(qwen3=True, tie=True, n_kv_head=2),
}


def _quiet(*args) -> None:
    pass


def _ids(n: int = 40, vocab: int = 300) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_transformers_checkpoint_loads_with_its_logits(shape, tmp_path):
    folder = make_llama(tmp_path / shape, **SHAPES[shape])
    model, tokenizer = shoshin.load(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if "qwen3" in shape else "LlamaForCausalLM")
    assert model.config.rope_theta == 5000.0 and model.config.qk_norm == ("qwen3" in shape)
    assert tokenizer.encode("Hello there!") == hf_tokenizer(folder)("Hello there!")["input_ids"]
    x = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)


def hf_tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


def _random_llama(**shape) -> torch.nn.Module:
    """A shoshin llama with large random weights (from-scratch init zeroes the projections)."""
    torch.manual_seed(1)
    config = ModelConfig(
        arch="llama", bias=False, n_layer=2, n_head=4, n_embd=32, block_size=64,
        vocab_size=len(gpt2_tokenizer()), rope_theta=500.0, layer_norm_eps=1e-6, **shape,
    )  # fmt: skip
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(1.0 if p.dim() == 1 else 0.0, 0.1 if p.dim() == 1 else 0.3)
    return model


@pytest.mark.parametrize(
    "shape",
    [
        dict(n_kv_head=2, tie_embeddings=False),
        dict(n_kv_head=4, tie_embeddings=True, intermediate_size=40),
        dict(n_kv_head=1, qk_norm=True, head_dim=12, tie_embeddings=False),
        dict(n_kv_head=2, qk_norm=True, tie_embeddings=True),
    ],
)
def test_a_shoshin_llama_exports_with_its_logits(shape, tmp_path):
    model = _random_llama(**shape)
    tokenizer = BpeTokenizer(gpt2_tokenizer().backend_tokenizer)
    write_transformers(model, tokenizer, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    want = "Qwen3ForCausalLM" if shape.get("qk_norm") else "LlamaForCausalLM"
    assert type(hf).__name__ == want
    x = _ids(60)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)
    # and back: the export loads into shoshin as the same model
    again, _ = shoshin.load(tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "option, message",
    [
        (dict(mlp="relu2"), "uses model.mlp=relu2, beyond the Llama/Qwen3 layout"),
        (dict(logit_softcap=30.0), "uses model.logit_softcap=30.0, beyond"),
    ],
)
def test_options_beyond_llama_refuse_to_export(option, message, tmp_path):
    tokenizer = BpeTokenizer(gpt2_tokenizer().backend_tokenizer)
    with pytest.raises(ShoshinError, match=message) as err:
        write_transformers(_random_llama(**option), tokenizer, tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_a_trained_llama_run_evaluates_and_exports_through_the_cli(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl")
    trained = run_cli(
        "train", "tiny", "model.arch=llama", "model.bias=false", "model.n_kv_head=1",
        "model.qk_norm=true", "model.tie_embeddings=false", f"data.source={chat}",
        "data.tokenizer=bpe", "data.vocab_size=300", "train.max_steps=20", "train.lr=1e-2",
        "train.calibrate=false", "train.sample_tokens=0",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    # evaluation: shoshin eval gives the numbers training recorded at its end
    (run,) = (tmp_path / "runs").iterdir()
    at_end = json.loads((run / "eval" / "heldout.json").read_text())
    evaluated = run_cli("eval", "latest", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    records = {r["name"]: r for r in json.loads(evaluated.stdout)}  # val, then heldout
    assert records["heldout"]["metrics"] == pytest.approx(at_end["metrics"], abs=1e-6)

    exported = run_cli("export", "latest", "--out", str(tmp_path / "hf"))
    assert exported.returncode == 0, exported.stderr
    model, tok = shoshin.load("latest")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    messages = [{"role": "user", "content": "Hi, I am Ann."}]
    x = hf_tokenizer(tmp_path / "hf").apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    assert x[0].tolist() == render_chat(tok, messages, add_generation_prompt=True)[0]
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def _finetune(folder, tmp_path, *more: str):
    chat = write_chat(tmp_path / "chat.jsonl")
    overrides = [
        f"data.source={chat}", "model.block_size=48", "train.max_steps=6", "train.lr=3e-3",
        "train.warmup_steps=2", "train.batch_size=8", "train.eval_iters=2",
        "train.sample_tokens=0", "train.calibrate=false", *more,
    ]  # fmt: skip
    config = load_config("finetune", overrides)
    return finetune(str(folder), config, tmp_path / "runs", overrides=overrides, log=_quiet)


def test_lora_on_a_qwen3_checkpoint_exports_merged_and_as_a_peft_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    folder = make_llama(tmp_path / "qwen3", qwen3=True, n_kv_head=2)
    run = _finetune(folder, tmp_path, "lora.rank=4", "lora.alpha=8")
    model, tok = shoshin.load(run.path)
    x = torch.tensor([tok.encode("Hello there! How are you doing today?")])
    with torch.no_grad():
        ours = model(x)
    merged = export(str(run.path), tmp_path / "merged")
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours, atol=1e-4, rtol=1e-4)

    out = export(str(run.path), tmp_path / "lora", adapter=True)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["fan_in_fan_out"] is False  # transformers' Llama layers are Linear
    assert set(adapter_config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base")
    with_adapter = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(x).logits, ours, atol=1e-4, rtol=1e-4)
        with with_adapter.disable_adapter():  # the adapters are what makes it equal
            assert (with_adapter(x).logits - ours).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_padded_embedding_fine_tunes_and_keeps_its_size(family, tmp_path):
    """45 rows beyond the tokenizer's tokens (nanoGPT pads GPT-2's 50,257 to 50,304): the chat
    tokens take the first unused rows, the rest keep their weights, the export keeps the size."""
    if family == "gpt2":
        folder = make_gpt2(tmp_path / "base", extra_rows=45)
    else:
        folder = make_llama(tmp_path / "base", tie=True, extra_rows=45)
    base = load_checkpoint(folder)
    known, rows = base.tokenizer.vocab_size, base.model.config.vocab_size
    assert rows == known + 45
    run = _finetune(folder, tmp_path, "train.max_steps=2")
    model, tok = shoshin.load(run.path)
    assert model.config.vocab_size == rows
    new = sorted(tok.special_tokens[t] for t in CHAT_TOKENS)
    assert new == list(range(known, known + len(new)))  # the first unused rows

    # copy_into alone: the new tokens' rows start at the mean of the known ones; the rest as saved
    fresh = build_model(model.config)
    base.copy_into(fresh, tokens=tok.vocab_size)
    weights = dict(base.model.named_parameters())
    name = next(n for n in weights if n.endswith(("wte.weight", "embed_tokens.weight")))
    ours, theirs = dict(fresh.named_parameters())[name], weights[name]
    torch.testing.assert_close(ours[:known], theirs[:known])
    torch.testing.assert_close(
        ours[known : tok.vocab_size], theirs[:known].mean(0).expand(len(new), -1)
    )
    torch.testing.assert_close(ours[tok.vocab_size :], theirs[tok.vocab_size :])

    out = export(str(run.path), tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([tok.encode("Hello there!") + new])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-4, rtol=1e-4)


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5000.0}


@pytest.mark.parametrize(
    "qwen3, changes, message",
    [
        (False, dict(architectures=["LlamaForSequenceClassification"]), "architectures"),
        (False, dict(rope_parameters=LLAMA3_ROPE), "rotary scaling of type 'llama3'"),
        (False, dict(rope_scaling={"type": "linear", "factor": 2.0}), "of type 'linear'"),
        (False, dict(attention_bias=True), "attention_bias=true is not supported"),
        (False, dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        (True, dict(use_sliding_window=True, sliding_window=16), "sliding-window attention"),
        (True, dict(layer_types=["sliding_attention", "full_attention"]), "sliding-window"),
        (True, dict(num_key_value_heads=3), "n_kv_head"),
        (True, dict(model_type="mistral"), "model_type 'mistral' is not supported"),
    ],
)
def test_what_shoshin_cannot_run_is_a_one_line_error(qwen3, changes, message, tmp_path):
    folder = make_llama(tmp_path / "base", qwen3=qwen3)
    _edit_config(folder, **changes)
    with pytest.raises(ShoshinError, match=message) as err:
        shoshin.load(folder)
    assert "\n" not in str(err.value)


def test_an_unsupported_checkpoint_through_the_cli(tmp_path):
    folder = make_llama(tmp_path / "base")
    _edit_config(folder, rope_parameters=LLAMA3_ROPE)
    chat = write_chat(tmp_path / "chat.jsonl")
    result = run_cli("finetune", "--from", str(folder), f"data.source={chat}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "'llama3'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
