"""LoRA fine-tuning through peft on a tiny local GPT-2: only the adapters train and are saved, the
run resumes exactly after SIGKILL, both exports give shoshin's logits in transformers (+ peft),
a changed or missing base is a one-line error, and the estimate counts the adapters only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli
from hf_tiny import make_gpt1, make_gpt2, write_chat
from safetensors.torch import load_file, save_file

import shoshin
from shoshin.config import key_reference, load_config
from shoshin.errors import ShoshinError
from shoshin.interop.export import export
from shoshin.interop.hf import load_checkpoint
from shoshin.runs.store import create_run
from shoshin.storage.checkpoint import checkpoint_path
from shoshin.training.estimate import estimate
from shoshin.training.finetune import finetune, finetune_config
from shoshin.training.trainer import Trainer

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

README = Path(__file__).resolve().parent.parent / "README.md"
LORA = ["lora.rank=8", "lora.alpha=16", "lora.dropout=0.1"]


def _overrides(chat, *more: str) -> list[str]:
    return [
        f"data.source={chat}", "model.block_size=48", "model.dropout=0", "train.lr=3e-3",
        "train.warmup_steps=2", "train.batch_size=8", "train.eval_iters=4",
        "train.sample_tokens=0", "train.calibrate=false", *LORA, *more,
    ]  # fmt: skip


def _quiet(*args) -> None:
    pass


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA fine-tuning run of a tiny GPT-2 (trained in-process, 24 steps) and its base folder."""
    root = tmp_path_factory.mktemp("lora")
    folder = make_gpt2(root / "gpt2-tiny")
    chat = write_chat(root / "chat.jsonl")
    overrides = _overrides(chat, "train.max_steps=24", "train.eval_interval=8")
    config = load_config("finetune", overrides)
    run = finetune(str(folder), config, root / "runs", overrides=overrides, log=_quiet)
    return run, folder, chat


def test_only_the_adapters_train_and_the_base_is_bitwise_unchanged(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    chat = write_chat(tmp_path / "chat.jsonl")
    base = load_checkpoint(folder)
    overrides = _overrides(chat, "train.max_steps=20", "train.eval_interval=5")
    config = finetune_config(base, load_config("finetune", overrides))
    run = create_run(config, tmp_path / "runs")
    trainer = Trainer(config, run, log=_quiet, init=base)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    trainer.fit()

    after = dict(trainer.model.named_parameters())
    for name, old in before.items():
        if name in trainable:
            assert not torch.equal(after[name], old), f"{name} did not train"
        else:
            assert torch.equal(after[name], old), f"frozen {name} changed"
    vals = [r["val_loss"] for r in run.metrics() if "val_loss" in r]
    assert len(vals) == 4 and vals[-1] < vals[0] - 0.2, vals

    # The checkpoint holds the adapters alone, and names the base it belongs to.
    ckpt = checkpoint_path(run.path / "checkpoints")
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) == {f"base_model.model.{n.replace('.default', '')}" for n in trainable}
    state = json.loads((ckpt / "state.json").read_text())
    assert state["base_model"]["weights_sha256"] == base.weights_sha256
    manifest = run.manifest
    assert manifest.trainable_params == sum(before[n].numel() for n in trainable)
    assert manifest.trainable_params < manifest.params / 4
    assert manifest.adapter.rank == 8 and manifest.adapter.targets == "both"
    assert manifest.adapter.target_modules == [
        "attn.c_attn",
        "attn.c_proj",
        "mlp.c_fc",
        "mlp.c_proj",
    ]


def test_show_prints_the_adapter_and_sample_loads_base_plus_adapter(lora_run):
    run, folder, _ = lora_run
    env = {"SHOSHIN_RUNS_DIR": str(run.path.parent)}
    show = run_cli("show", run.id, env=env)
    assert show.returncode == 0, show.stderr
    assert "adapter   lora rank 8, alpha 16, dropout 0.1" in show.stdout
    assert f"base      {folder}" in show.stdout
    sample = run_cli("sample", run.id, "--prompt", "Hi!", "--temperature", "0",
                     "--max-new-tokens", "5", env=env)  # fmt: skip
    assert sample.returncode == 0, sample.stderr

    # The loaded model is the base with the adapters merged in: plain layers, no peft wrappers.
    model, tok = shoshin.load(run.path)
    assert all(type(m).__module__.startswith(("torch", "shoshin")) for m in model.modules())
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_both_exports_give_shoshins_logits(lora_run, tmp_path, monkeypatch):
    run, _, _ = lora_run
    model, tok = shoshin.load(run.path)
    x = torch.tensor([tok.encode("Hello there! How are you doing today?")])
    with torch.no_grad():
        ours = model(x)

    merged = export(str(run.path), tmp_path / "merged")
    hf = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours, atol=1e-4, rtol=1e-4)

    out = export(str(run.path), tmp_path / "lora", adapter=True)
    assert {p.name for p in (out / "adapter").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["fan_in_fan_out"] is True  # transformers' GPT-2 layers are Conv1D
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base")
    with_adapter = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(x).logits, ours, atol=1e-4, rtol=1e-4)
        with with_adapter.disable_adapter():  # the adapters are what makes it equal
            assert (with_adapter(x).logits - ours).abs().max() > 1e-3
        merged_by_peft = with_adapter.merge_and_unload()
        torch.testing.assert_close(merged_by_peft(x).logits, ours, atol=1e-4, rtol=1e-4)

    # The README's snippet, as written, in the folder the export went to.
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "PeftModel.from_pretrained" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(snippet, namespace)
    with torch.no_grad():
        logits = namespace["model"].eval()(x).logits
    torch.testing.assert_close(logits, ours, atol=1e-4, rtol=1e-4)


def test_adapter_export_of_a_full_finetune_is_a_one_line_error(tmp_path):
    folder = make_gpt1(tmp_path / "gpt1-tiny")
    chat = write_chat(tmp_path / "chat.jsonl")
    overrides = [*_overrides(chat, "train.max_steps=2"), "lora.rank=0"]
    config = load_config("finetune", overrides)
    run = finetune(str(folder), config, tmp_path / "runs", overrides=overrides, log=_quiet)
    result = run_cli("export", run.id, "--out", str(tmp_path / "x"), "--adapter")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "not a LoRA run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_gpt1_adapter_export_loads_in_peft(tmp_path):
    folder = make_gpt1(tmp_path / "gpt1-tiny")
    chat = write_chat(tmp_path / "chat.jsonl")
    overrides = _overrides(chat, "train.max_steps=4", "lora.targets=attention")
    run = finetune(str(folder), load_config("finetune", overrides), tmp_path / "runs", log=_quiet)
    model, tok = shoshin.load(run.path)
    out = export(str(run.path), tmp_path / "adapter", adapter=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "base")
    assert type(base).__name__ == "OpenAIGPTLMHeadModel"
    with_adapter = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    x = torch.tensor([tok.encode("hello there! how are you doing today?")])
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(x).logits, model(x), atol=1e-4, rtol=1e-4)


def test_changed_or_missing_base_is_a_one_line_error(lora_run, tmp_path):
    run, folder, _ = lora_run
    # A copy of the run whose recorded base we may damage without disturbing the other tests.
    runs = tmp_path / "runs"
    copy = runs / run.id
    shutil.copytree(run.path, copy)
    base = tmp_path / "base"
    shutil.copytree(folder, base)
    for ckpt in (copy / "checkpoints").glob("step-*"):
        state = json.loads((ckpt / "state.json").read_text())
        state["base_model"].update(source=str(base), path=str(base))
        (ckpt / "state.json").write_text(json.dumps(state))
    shoshin.load(copy)  # the same weights under another name are fine

    tensors = load_file(base / "model.safetensors")
    tensors["transformer.h.0.mlp.c_fc.bias"] = tensors["transformer.h.0.mlp.c_fc.bias"] + 1
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    changed = run_cli(
        "sample", run.id, "--max-new-tokens", "3", env={"SHOSHIN_RUNS_DIR": str(runs)}
    )
    assert changed.returncode == 2
    assert changed.stderr.startswith("error: the weights of ")
    assert "changed since it was fine-tuned" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    with pytest.raises(ShoshinError, match="changed since it was fine-tuned"):
        export(str(copy), tmp_path / "x", adapter=True)
    assert not (tmp_path / "x").exists()

    shutil.rmtree(base)
    with pytest.raises(ShoshinError, match="cannot be loaded: checkpoint .* does not exist") as exc:
        shoshin.load(copy)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "key, value", [("n_layer", 64), ("vocab_size", 10**9), ("block_size", 4096)]
)
def test_a_config_that_does_not_describe_the_base_is_refused_before_building(
    lora_run, tmp_path, key, value
):
    run, _, _ = lora_run
    copy = tmp_path / run.id
    shutil.copytree(run.path, copy)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"][key] = value
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ShoshinError, match="does not describe a model fine-tuned from"):
        shoshin.load(copy)


def test_estimate_counts_gradients_and_optimizer_state_of_the_adapters_only(tmp_path):
    chat = write_chat(tmp_path / "chat.jsonl")
    shape = ["model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.block_size=32"]
    full = estimate(load_config("tiny", [f"data.source={chat}", *shape]), calibration_steps=0,
                    log=_quiet)  # fmt: skip
    lora = estimate(
        load_config("tiny", [f"data.source={chat}", *shape, "lora.rank=4", "lora.targets=mlp"]),
        calibration_steps=0,
        log=_quiet,
    )
    # Per layer: c_fc (64 -> 256) and c_proj (256 -> 64), each rank x (in + out).
    assert lora.trainable_params == 2 * 2 * 4 * (64 + 256)
    assert full.trainable_params == full.params
    assert lora.params == full.params + lora.trainable_params
    assert lora.memory["gradients"] == 4 * lora.trainable_params
    assert lora.memory["optimizer"] == 8 * lora.trainable_params
    assert full.memory["optimizer"] == 8 * full.params


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rank=-1", "lora.rank must not be negative, got -1"),
        ("lora.targets=embeddings", "lora.targets must be one of attention, mlp, both; got"),
        ("lora.dropout=1.5", "lora.dropout must be in [0, 1), got 1.5"),
        ("lora.alpha=0", "lora.alpha must be positive, got 0"),
        ("model.arch=lstm", "lora.rank does not apply to model.arch=lstm"),
    ],
)
def test_bad_lora_settings_are_one_line_config_errors(override, message):
    with pytest.raises(ShoshinError) as exc:
        load_config("tiny", ["lora.rank=4", override])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_lora_keys_are_described_and_need_a_pretrained_base(tmp_path):
    described = {k.key: k for k in key_reference()}
    for key in ("lora.rank", "lora.alpha", "lora.dropout", "lora.targets"):
        assert described[key].help
    assert described["lora.rank"].default == 0
    assert described["lora.targets"].choices == ("attention", "mlp", "both")
    chat = write_chat(tmp_path / "chat.jsonl")
    scratch = run_cli("train", "tiny", f"data.source={chat}", "model.block_size=32",
                      "train.calibrate=false", "lora.rank=4")  # fmt: skip
    assert scratch.returncode == 2
    assert "shoshin finetune --from SRC lora.rank=8" in scratch.stderr
    assert len(scratch.stderr.strip().splitlines()) == 1, scratch.stderr


@pytest.mark.slow
def test_lora_resume_after_sigkill_logs_the_same_losses(tmp_path):
    folder = make_gpt2(tmp_path / "gpt2-tiny")
    chat = write_chat(tmp_path / "chat.jsonl")
    args = ["finetune", "--from", str(folder), *_overrides(chat, "train.max_steps=120"),
            "train.eval_interval=40", "train.checkpoint_interval=20", "train.log_interval=1",
            "train.batch_size=16", "model.dropout=0.1"]  # fmt: skip

    def env(runs):
        return {**os.environ, "SHOSHIN_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}

    def metrics(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    straight = subprocess.run([sys.executable, "-m", "shoshin", *args], env=env(tmp_path / "a"),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert straight.returncode == 0, straight.stderr
    reference = metrics(next((tmp_path / "a").iterdir()))

    proc = subprocess.Popen([sys.executable, "-m", "shoshin", *args], env=env(tmp_path / "b"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline, run = time.monotonic() + 120, None
    while time.monotonic() < deadline:  # kill it past the checkpoint at step 20
        found = list((tmp_path / "b").glob("*/metrics.jsonl")) if (tmp_path / "b").exists() else []
        if found and found[0].stat().st_size:
            run = found[0].parent
            if metrics(run)[-1]["step"] >= 25:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run is not None
    assert metrics(run)[-1]["step"] < 120, "the run finished before it could be killed"

    resumed = run_cli("train", "--resume", run.name, env={"SHOSHIN_RUNS_DIR": str(tmp_path / "b")})
    assert resumed.returncode == 0, resumed.stderr
    keys = ("step", "train_loss", "val_loss", "lr")
    assert [{k: r.get(k) for k in keys} for r in metrics(run)] == [
        {k: r.get(k) for k in keys} for r in reference
    ]
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
