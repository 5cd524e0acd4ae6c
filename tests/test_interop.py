"""Hugging Face interop: GPT-1/GPT-2 checkpoints load into shoshin's GPT with the same logits as
transformers, runs export back to checkpoints transformers loads, and bad checkpoints fail clearly."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from conftest import run_cli
from hf_tiny import make_gpt1, make_gpt2, write_chat
from safetensors.torch import load_file, save_file

import shoshin
from shoshin.errors import ShoshinError
from shoshin.interop.export import export
from shoshin.models import GPT

transformers = pytest.importorskip("transformers")

TEXT = "Hello there! How are you doing today? I went hiking, then cooked pasta."


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(ids).logits


def our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def random_ids(vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 48), generator=torch.Generator().manual_seed(seed))


def test_gpt2_checkpoint_loads_with_equal_logits_and_tokenizer(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    model, tok = shoshin.load(folder)
    assert isinstance(model, GPT) and model.config.norm == "pre"
    assert model.config.activation == "gelu_tanh"
    ids = random_ids(model.config.vocab_size)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(folder, ids), atol=1e-4, rtol=1e-4)

    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.encode(TEXT) == hf_tok(TEXT).input_ids
    assert tok.decode(tok.encode(TEXT)) == TEXT  # byte-level BPE round-trips any text
    assert tok.decode(tok.encode("naïve café 🙂")) == "naïve café 🙂"
    assert tok.special_tokens == {"<|endoftext|>": hf_tok.eos_token_id}


def test_gpt1_checkpoint_loads_with_equal_logits_and_tokenizer(tmp_path):
    folder = make_gpt1(tmp_path / "openai-gpt-tiny")
    assert not (folder / "tokenizer.json").exists()  # only vocab.json + merges.txt, as openai-gpt
    model, tok = shoshin.load(folder)
    assert isinstance(model, GPT) and model.config.norm == "post"
    # transformers' OpenAIGPT maps afn="gelu" to gelu_new: the tanh approximation.
    assert model.config.activation == "gelu_tanh"
    ids = random_ids(model.config.vocab_size, seed=1)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(folder, ids), atol=1e-4, rtol=1e-4)

    hf_tok = transformers.OpenAIGPTTokenizer.from_pretrained(folder)
    assert tok.encode(TEXT) == hf_tok(TEXT).input_ids
    # GPT-1's tokenizer lowercases and splits punctuation: text round-trips up to that.
    assert tok.decode(tok.encode("hello there , how are you ?")) == "hello there , how are you ?"


def test_pytorch_model_bin_is_read_with_weights_only(tmp_path):
    folder = make_gpt2(tmp_path / "bin")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    model, _ = shoshin.load(folder)
    ids = random_ids(model.config.vocab_size)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(folder, ids), atol=1e-4, rtol=1e-4)

    # A pickle holding more than tensors is refused, never executed.
    torch.save(
        {"transformer.wte.weight": tensors["transformer.wte.weight"], "x": Evil()},
        folder / "pytorch_model.bin",
    )
    with pytest.raises(
        ShoshinError, match="pytorch_model.bin is corrupt or holds more than tensors"
    ):
        shoshin.load(folder)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_config", "incomplete: missing config.json"),
        ("no_weights", "incomplete: missing its weights"),
        ("truncated", "model.safetensors is corrupt"),
        ("missing_tensor", "incomplete: missing tensor h.1.mlp.c_fc.weight"),
        ("no_tokenizer", "incomplete: missing its tokenizer"),
        ("bad_type", "model_type 'mistral' is not supported"),
    ],
)
def test_broken_checkpoint_gives_one_line_error(tmp_path, damage, message):
    folder = make_gpt2(tmp_path / "broken")
    weights = folder / "model.safetensors"
    if damage == "no_config":
        (folder / "config.json").unlink()
        (folder / "generation_config.json").unlink()
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing_tensor":
        tensors = load_file(weights)
        del tensors["transformer.h.1.mlp.c_fc.weight"]
        save_file(tensors, weights)
    elif damage == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "bad_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(ShoshinError, match=message) as info:
        shoshin.load(folder)
    assert "\n" not in str(info.value)


def test_broken_checkpoint_through_the_cli(tmp_path):
    folder = make_gpt2(tmp_path / "broken")
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.wpe.weight"]
    save_file(tensors, folder / "model.safetensors")
    before = (folder / "model.safetensors").read_bytes()
    result = run_cli("sample", str(folder), "--prompt", "Hi")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing tensor wpe.weight" in result.stderr and "Traceback" not in result.stderr
    assert (folder / "model.safetensors").read_bytes() == before


NOT_CACHED = "is not a run (see: shoshin runs), and not in the local Hugging Face cache"


def test_hub_id_without_network_is_a_one_line_error(tmp_path):
    # HF_HUB_OFFLINE makes huggingface_hub answer at once, as a machine without network would.
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = run_cli("sample", "gpt2", "--prompt", "Hi", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: 'gpt2' {NOT_CACHED} (HF_HUB_OFFLINE is set)")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_an_unreachable_hub_is_a_one_line_error(tmp_path):
    # A closed port on loopback stands for a machine without network: refused at once, nothing
    # leaves this machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf-home")}
    env["HF_HUB_OFFLINE"] = "0"
    for name in ("distilgpt2", "someone/some-model"):
        result = run_cli("sample", name, "--prompt", "Hi", env=env)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: '{name}' {NOT_CACHED} (the hub cannot be reached")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("offline", ["1", "0"])
def test_a_mistyped_run_name_never_goes_to_the_hub(tmp_path, offline):
    # With HF_HUB_OFFLINE=0 and the hub pointed at a port where nothing listens, a lookup would
    # fail with "cannot be reached": the messages below prove none was tried.
    env = {
        "HF_HUB_OFFLINE": offline,
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf-home"),
    }
    result = run_cli("sample", "nosuchrun", env=env)
    assert result.returncode == 2
    assert (
        result.stderr == f"error: no run 'nosuchrun' in {tmp_path / 'runs'} (see: shoshin runs)\n"
    )
    result = run_cli("sample", "gtp2", env=env)
    assert result.stderr == (
        f"error: no run 'gtp2' in {tmp_path / 'runs'} (see: shoshin runs); did you mean the Hugging Face model "
        "gpt2?\n"
    )
    result = run_cli("finetune", "--from", "gpt-2", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(
        "error: checkpoint gpt-2 does not exist; did you mean gpt2?"
    )
    assert not (tmp_path / "hf-home").exists()  # huggingface_hub never ran


def test_names_shaped_like_hub_ids():
    from shoshin.interop.hub import KNOWN_HUB_MODELS, looks_like_hub_id

    assert all(looks_like_hub_id(name) for name in KNOWN_HUB_MODELS)
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M")
    for name in ("nosuchrun", "gtp2", "20260101-1200", "latest", "a/b/c", "/abs/path"):
        assert not looks_like_hub_id(name), name


def test_sample_directly_from_a_checkpoint_folder(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    args = ("sample", str(folder), "--prompt", "Hello", "--max-new-tokens", "8", "--seed", "1")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("Hello") and first.stdout == second.stdout


@pytest.mark.parametrize("make", [make_gpt2, make_gpt1], ids=["gpt2", "gpt1"])
def test_export_of_a_loaded_checkpoint_round_trips(tmp_path, make):
    folder = make(tmp_path / "src")
    out = tmp_path / "exported"
    result = run_cli("export", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    model, tok = shoshin.load(folder)
    ids = random_ids(model.config.vocab_size, seed=2)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(out, ids), atol=1e-4, rtol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT).input_ids == tok.encode(TEXT)
    expected = "GPT2LMHeadModel" if make is make_gpt2 else "OpenAIGPTLMHeadModel"
    assert json.loads((out / "config.json").read_text())["architectures"] == [expected]
    # An existing, non-empty --out is never overwritten.
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(ShoshinError, match="already exists and is not empty"):
        export(str(folder), out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def _train(tmp_path, *overrides: str) -> str:
    """A tiny GPT/LSTM run on a small local chat file, trained in this process (quicker than the CLI)."""
    from shoshin.config import load_config
    from shoshin.training.runner import train

    chat = write_chat(tmp_path / "chat.jsonl")
    config = load_config(
        "tiny",
        [
            f"data.source={chat}",
            "train.sample_tokens=0",
            "train.eval_iters=2",
            "train.calibrate=false",
            *overrides,
        ],
    )
    return train(config, tmp_path / "runs", log=lambda *a: None).id


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_export_of_a_bpe_gpt_run_trained_from_scratch(tmp_path, norm):
    run = _train(
        tmp_path,
        "data.tokenizer=bpe",
        "data.vocab_size=300",
        "train.max_steps=10",
        f"model.norm={norm}",
    )
    out = tmp_path / "exported"
    result = run_cli("export", run, "--out", str(out))
    assert result.returncode == 0, result.stderr
    model, tok = shoshin.load(run)
    ids = random_ids(model.config.vocab_size, seed=3)[:, : model.config.block_size]
    torch.testing.assert_close(our_logits(model, ids), hf_logits(out, ids), atol=1e-4, rtol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT).input_ids == tok.encode(TEXT)
    assert hf_tok.decode(tok.encode(TEXT)) == TEXT
    # The run is a chat model: the exported chat template renders our chat format.
    messages = [{"role": "user", "content": "Hi!"}]
    rendered = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>Hi!<|end|><|assistant|>"


@pytest.mark.slow
def test_char_and_lstm_runs_cannot_be_exported_and_say_why(tmp_path):
    char_run = _train(tmp_path, "train.max_steps=2")
    result = run_cli("export", char_run, "--out", str(tmp_path / "a"))
    assert result.returncode == 2
    assert "char tokenizer" in result.stderr and "data.tokenizer=bpe" in result.stderr
    lstm_run = _train(tmp_path, "train.max_steps=2", "model.arch=lstm")
    with pytest.raises(ShoshinError, match="is an LSTM run: transformers has no LSTM"):
        export(lstm_run, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
