"""Fine-tuning a tiny local GPT-2/GPT-1 checkpoint on a chat JSONL file: role tokens are added, the
embedding grows, the loss covers the assistant only, val loss falls, and the run behaves like any
other (sample, load, resume, export)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from hf_tiny import make_gpt1, make_gpt2, write_chat

import shoshin
from shoshin.config import load_config
from shoshin.data.chat import render_chat
from shoshin.data.dataset import prepare_data
from shoshin.data.tokenizers import CHAT_TOKENS, EOT
from shoshin.interop.hf import load_checkpoint
from shoshin.models import GPT
from shoshin.models.loss import IGNORE_INDEX

transformers = pytest.importorskip("transformers")


def test_assistant_only_mask_on_a_hand_made_example(tmp_path):
    base = load_checkpoint(make_gpt2(tmp_path / "gpt2-tiny"))
    example = tmp_path / "hand.jsonl"
    conversation = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine, thanks."},
    ]
    example.write_text("\n".join(json.dumps({"messages": conversation}) for _ in range(4)) + "\n")
    cfg = load_config("finetune", [f"data.source={example}"]).data
    data = prepare_data(cfg, tokenizer=base.tokenizer)
    tok = data.tokenizer
    assert all(t in tok.special_tokens for t in (*CHAT_TOKENS, EOT))
    assert tok.vocab_size == base.tokenizer.vocab_size + 4  # <|endoftext|> was there already

    # One conversation as the dataset stores it: its tokens, and the targets the loss keeps.
    ids, mask = render_chat(tok, conversation)
    tokens = data.train.tokens[: len(ids)].tolist()
    assert tokens == ids
    kept = [t for t, m in zip(tokens, data.train.mask[: len(ids)].tolist(), strict=True) if m]
    assert tok.decode(kept) == "Hello!<|end|>Fine, thanks.<|end|>"

    # The model's loss on that window is the mean cross-entropy over exactly those targets.
    model = GPT(dataclasses.replace(base.model.config, vocab_size=tok.vocab_size))
    base.copy_into(model)
    x = torch.tensor([tokens[:-1]])
    y = torch.tensor([tokens[1:]])
    y[torch.tensor([mask[1:]]) == 0] = IGNORE_INDEX
    keep = torch.tensor(mask[1:]) == 1
    with torch.no_grad():
        by_hand = F.cross_entropy(model(x)[0][keep], torch.tensor(tokens[1:])[keep])
        torch.testing.assert_close(model(x, y), by_hand)


def test_new_token_rows_start_at_the_mean_embedding(tmp_path):
    base = load_checkpoint(make_gpt1(tmp_path / "gpt1-tiny"))
    cfg = base.model.config
    grown = GPT(dataclasses.replace(cfg, vocab_size=cfg.vocab_size + 5, block_size=16))
    base.copy_into(grown)
    old = base.model.wte.weight
    torch.testing.assert_close(grown.wte.weight[: cfg.vocab_size], old)
    torch.testing.assert_close(grown.wte.weight[cfg.vocab_size :], old.mean(0).expand(5, -1))
    torch.testing.assert_close(grown.wpe.weight, base.model.wpe.weight[:16])
    assert grown.lm_head.weight is grown.wte.weight


def test_model_shape_cannot_be_overridden(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    result = run_cli("finetune", "--from", str(folder), "model.n_layer=4")
    assert result.returncode == 2
    assert "model.n_layer comes from the checkpoint" in result.stderr


@pytest.mark.slow
def test_finetune_chat_run_learns_and_works_everywhere(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny", init_std=0.02)
    chat = write_chat(tmp_path / "chat.jsonl")
    args = [
        "finetune", "--from", str(folder), f"data.source={chat}", "model.block_size=48",
        "model.dropout=0", "train.max_steps=40", "train.lr=3e-3", "train.warmup_steps=2",
        "train.batch_size=8", "train.eval_interval=10", "train.checkpoint_interval=5",
        "train.log_interval=5", "train.sample_tokens=10", "train.calibrate=false",
    ]  # fmt: skip
    # Interrupt it after its first checkpoint, then resume: a fine-tuning run resumes like any run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoshin", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(runs.glob("*/checkpoints/index.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    run = next(runs.iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    if proc.returncode == 130:
        assert manifest["status"] == "interrupted", err
        resumed = run_cli("train", "--resume", run.name)
        assert resumed.returncode == 0, resumed.stderr
    else:  # finished before the signal arrived: still a complete run
        assert proc.returncode == 0, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps"] == 40
    assert manifest["base_model"]["source"] == str(folder)
    assert manifest["base_model"]["model_type"] == "gpt2"

    vals = [r["val_loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if "val_loss" in r]
    assert len(vals) >= 4 and vals[-1] < vals[0] - 0.5, vals

    model, tok = shoshin.load(run.name)
    # 320 tokens + <|system|> <|user|> <|assistant|> <|end|>
    assert tok.vocab_size == model.config.vocab_size == 324
    sample = run_cli("sample", run.name, "--prompt", "Hi, I am Ann. What is for dinner?",
                     "--temperature", "0", "--max-new-tokens", "12")  # fmt: skip
    assert sample.returncode == 0, sample.stderr

    out_dir = tmp_path / "exported"
    exported = run_cli("export", run.name, "--out", str(out_dir))
    assert exported.returncode == 0, exported.stderr
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    messages = [{"role": "user", "content": "Hi, I am Bob. What is for dinner?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids == render_chat(tok, messages, add_generation_prompt=True)[0]
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_finetuned_gpt1_run_exports_as_openai_gpt(tmp_path):
    from shoshin.interop.export import export
    from shoshin.training.finetune import finetune

    folder = make_gpt1(tmp_path / "gpt1-tiny")
    chat = write_chat(tmp_path / "chat.jsonl")
    overrides = [f"data.source={chat}", "model.block_size=48", "train.max_steps=3"]
    overrides += ["train.eval_iters=2", "train.sample_tokens=0", "train.calibrate=false"]
    config = load_config("finetune", overrides)
    run = finetune(str(folder), config, tmp_path / "runs", overrides=overrides, log=lambda *a: None)
    model, tok = shoshin.load(run.path)
    assert model.config.norm == "post" and EOT in tok.special_tokens  # GPT-1 had no <|endoftext|>

    out = export(run.id, tmp_path / "exported")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "OpenAIGPTLMHeadModel"
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Hi, I am Eve. What is for dinner?"}]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>Hi, I am Eve. What is for dinner?<|end|><|assistant|>"
    x = torch.tensor([render_chat(tok, messages, add_generation_prompt=True)[0]])
    assert hf_tok(text).input_ids == x[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)
