"""Every mistake a user can make with data or config: one-line message, exit status 2, no traceback."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

FAST = ["train.max_steps=2", "train.sample_tokens=0", "train.eval_iters=1", "train.calibrate=false"]


def assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def train(source, *extra):
    return run_cli("train", "tiny", f"data.source={source}", *FAST, *extra)


def test_missing_path(tmp_path):
    assert_user_error(train(tmp_path / "nope.txt"), "nope.txt", "does not exist")


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("   \n")
    assert_user_error(train(path), "empty.txt", "empty")


def test_empty_folder(tmp_path):
    (tmp_path / "folder").mkdir()
    assert_user_error(train(tmp_path / "folder"), "folder", "no .txt files")


def test_binary_file(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_bytes(bytes(range(256)) * 10)
    assert_user_error(train(path), "weights.txt", "binary")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café crème brûlée ".encode("latin-1") * 50)
    assert_user_error(train(path), "latin1.txt", "UTF-8")


def _chat_line(*pairs):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


def test_malformed_json_line(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = _chat_line(("user", "hi"), ("assistant", "hello"))
    path.write_text(f"{good}\n{good}\n{{not json\n")
    assert_user_error(train(path), "chat.jsonl:3", "malformed JSON")


def test_unknown_role(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        _chat_line(("user", "hi"), ("assistant", "hello"))
        + "\n"
        + _chat_line(("robot", "beep"))
        + "\n"
    )
    assert_user_error(train(path), "chat.jsonl:2", "unknown role 'robot'")


def test_corpus_too_small_for_one_batch(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("to be or not to be, that is the question\n")
    assert_user_error(train(path), "small.txt", "too small", "model.block_size")


def test_unknown_config_key_suggests_close_match():
    assert_user_error(
        run_cli("train", "tiny", "model.n_layers=3"),
        "model.n_layers",
        "did you mean model.n_layer?",
    )


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.n_layer=two", "model.n_layer expects an integer"),
        ("train.lr=fast", "train.lr expects a number"),
        ("model.arch=rnn", "model.arch must be one of gpt, llama, lstm"),
        ("model.n_embd=33", "multiple of model.n_head"),
        ("nonsense", "must look like section.key=value"),
    ],
)
def test_bad_config_values(override, fragment):
    assert_user_error(run_cli("train", "tiny", override), fragment)


def test_unknown_preset_suggests_close_match():
    assert_user_error(run_cli("train", "tinyy"), "did you mean tiny?")


def test_missing_run():
    # Not shaped like a hub id: a run name, reported at once, never looked up on the network.
    assert_user_error(run_cli("sample", "no-such-run"), "no run 'no-such-run'", "shoshin runs")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_asked_for_without_a_gpu():
    assert run_cli("train", "tiny", *FAST).returncode == 0
    for command in ("sample", "chat"):
        assert_user_error(
            run_cli(command, "latest", "--device", "cuda", input=""), "--device cuda: no CUDA GPU"
        )


def test_corrupt_checkpoint_is_reported_and_left_alone(tmp_path):
    assert run_cli("train", "tiny", *FAST).returncode == 0
    run = next((tmp_path / "runs").iterdir())
    weights = next(run.glob("checkpoints/step-*/model.safetensors"))
    weights.write_bytes(b"garbage")
    assert_user_error(run_cli("sample", run.name, "--prompt", "hi"), "corrupt", "model.safetensors")
    assert weights.read_bytes() == b"garbage"
