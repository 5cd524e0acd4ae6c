"""The real lm-evaluation-harness against shoshin: `lm_eval` talking to a real `shoshin serve` equals
`lm_eval --model hf` on the exported model; `shoshin eval --tasks` on a char-tokenizer run through
`tokenizer_backend=remote` (multiple choice, rolling log-likelihood, generation, chat generation)
equals direct computations with the model; and the harness's failures are one-line errors."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import _shared_cache, run_cli
from eval_tiny import GENERATE, QUESTIONS, TEXTS, write_tasks
from hf_tiny import write_chat
from reference import naive_generate

from shoshin.data.chat import stop_token_ids
from shoshin.data.tokenizers import EOT
from shoshin.generation.conversation import chat_template
from shoshin.generation.sampling import SamplingParams
from shoshin.loading import load

pytest.importorskip("lm_eval")

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(folder: Path, *overrides: str) -> Path:
    """A tiny chat run trained for a few steps on conversations written on the spot; its path."""
    data = write_chat(folder / "chat.jsonl")
    runs = folder / "runs"
    result = run_cli(
        "train", "tiny", f"data.source={data}", "train.max_steps=30", "train.sample_tokens=0",
        "train.eval_interval=30", *overrides, "--runs-dir", str(runs),
        env={"SHOSHIN_CACHE_DIR": str(_shared_cache()), "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = runs.iterdir()
    return run


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("char"), "data.tokenizer=char")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("bpe"), "data.tokenizer=bpe", "data.vocab_size=300")


@pytest.fixture
def tasks(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    return write_tasks(tmp_path / "tasks")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lm_eval(*args: str, cwd: Path) -> dict[int, dict]:
    """Run the real lm_eval command line; its per-sample records of tiny_mc by doc_id."""
    out = cwd / "out"
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", *args, "--tasks", "tiny_mc", "--include_path",
         str(cwd / "tasks"), "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, timeout=600, cwd=cwd, env={**os.environ, **OFFLINE},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = glob.glob(str(out / "**" / "samples_tiny_mc_*.jsonl"), recursive=True)
    Path(path).rename(path + ".read")  # the next run of the same task writes a new file
    rows = [json.loads(line) for line in Path(path + ".read").read_text().splitlines()]
    return {r["doc_id"]: r for r in rows}


def _assert_same_samples(got: dict[int, dict], want: dict[int, dict]) -> None:
    assert sorted(got) == sorted(want) == list(range(len(QUESTIONS)))
    for doc_id, row in want.items():
        lls = [float(r[0][0]) for r in row["resps"]]  # (the CLI writes some as strings)
        assert [float(r[0][0]) for r in got[doc_id]["resps"]] == pytest.approx(lls, abs=1e-4)
        assert got[doc_id]["acc"] == row["acc"]


@pytest.mark.slow
def test_lm_eval_against_shoshin_serve_equals_lm_eval_hf_on_the_export(bpe_run, tasks, tmp_path):
    exported = tmp_path / "hf"
    assert run_cli("export", str(bpe_run), "--out", str(exported)).returncode == 0
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "shoshin", "serve", str(bpe_run), "--port", str(port),
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.3)
        base = f"base_url=http://127.0.0.1:{port}/v1/completions,model={bpe_run.name},max_length=64"
        served = _lm_eval(
            "--model", "local-completions", "--model_args", f"{base},tokenizer_backend=remote",
            "--batch_size", "4", cwd=tmp_path,
        )  # fmt: skip
        hf_tokenizer = _lm_eval(
            "--model", "local-completions", "--model_args",
            f"{base},tokenizer_backend=huggingface,tokenizer={exported}", cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    reference = _lm_eval(
        "--model", "hf", "--model_args", f"pretrained={exported},dtype=float32", "--device", "cpu",
        "--batch_size", "1", cwd=tmp_path,
    )  # fmt: skip
    _assert_same_samples(served, reference)
    _assert_same_samples(hf_tokenizer, reference)
    assert len({r["acc"] for r in reference.values()}) == 2, (
        "every answer right (or wrong) proves little"
    )


def _records(run: Path, task: str) -> list[dict]:
    lines = (run / "eval" / f"lm-eval.{task}.samples.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda r: r["doc_id"])


def _logprob(model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        lp = model(ids)[0].float().log_softmax(-1)
    return sum(float(lp[len(context) - 1 + i, t]) for i, t in enumerate(continuation))


@pytest.mark.slow
def test_char_run_through_the_remote_tokenizer_scores_as_the_model_does(char_run, tasks, cli):
    result = cli(
        "eval", str(char_run), "--tasks", "tiny_mc,tiny_ppl,tiny_gen", "--include-path",
        str(tasks), env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, tok = load(char_run)
    for row, (question, choices, _) in zip(_records(char_run, "tiny_mc"), QUESTIONS, strict=True):
        context = tok.encode(question)
        expected = [_logprob(model, context, tok.encode(" " + c)) for c in choices]
        assert [r[0][0] for r in row["resps"]] == pytest.approx(expected, abs=1e-4)
    # rolling log-likelihood: a text shorter than the window is scored after <|endoftext|>
    short = _records(char_run, "tiny_ppl")[1]
    eot = tok.special_tokens[EOT]
    assert short["resps"][0][0] == pytest.approx(
        _logprob(model, [eot], tok.encode(TEXTS[1])), abs=1e-4
    )
    assert len(tok.encode(TEXTS[0])) > 64  # the long one went through rolling windows
    # generation: greedy, as the naive reference continues the prompt, cut at the stop string
    stops = stop_token_ids(tok)
    for row, (question, _) in zip(_records(char_run, "tiny_gen"), GENERATE, strict=True):
        ids = naive_generate(
            model, tok.encode(question), SamplingParams(12, temperature=0, stop_ids=stops)
        )
        text = tok.decode([t for t in ids if t not in stops]).split("\n")[0]
        assert row["resps"][0][0] == text
    record = json.loads((char_run / "eval" / "lm-eval.tiny_mc.json").read_text())
    details = record["details"]
    assert details["version"] == 1.0 and details["samples"]["effective"] == len(QUESTIONS)
    assert details["harness_version"].startswith("0.4")
    assert details["settings"]["tokenizer_backend"] == "remote"
    assert details["settings"]["max_length"] == 64  # the model's window
    assert record["command"][:2] == ["shoshin", "eval"]
    assert 0.0 <= record["metrics"]["acc"] <= 1.0
    shown = cli("show", str(char_run))
    assert "lm-eval.tiny_mc" in shown.stdout and "lm-eval.tiny_ppl" in shown.stdout


@pytest.mark.slow
def test_chat_generation_task_goes_through_chat_completions(char_run, tasks, cli):
    result = cli(
        "eval", str(char_run), "--tasks", "tiny_gen", "--include-path", str(tasks), "--chat",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model, tok = load(char_run)
    template = chat_template(tok)
    for row, (question, _) in zip(_records(char_run, "tiny_gen"), GENERATE, strict=True):
        prompt = template.render([{"role": "user", "content": question}])
        params = SamplingParams(12, temperature=0, stop_ids=template.stop_ids)
        ids = naive_generate(model, prompt, params)
        text = tok.decode([t for t in ids if t not in template.stop_ids]).split("\n")[0]
        assert row["resps"][0][0] == text
    record = json.loads((char_run / "eval" / "lm-eval.tiny_gen.json").read_text())
    assert record["details"]["settings"]["model"] == "local-chat-completions"


def test_tokenizer_endpoints_answer_what_the_remote_tokenizer_asks(char_run):
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    from shoshin.serving import ServeConfig, background_server, create_app

    model, tok = load(char_run)
    with background_server(create_app(model, tok, "char", ServeConfig())) as url:
        base = f"{url}/v1/completions"
        assert check_remote_tokenizer_support(base)
        remote = RemoteTokenizer(base)
        assert remote.eos_token == "<|end|>" and remote.bos_token == EOT
        assert remote.eos_token_id == tok.special_tokens["<|end|>"]
        assert remote.bos_token_id == tok.special_tokens[EOT]
        assert remote.encode("hi there") == tok.encode("hi there")
        assert remote.decode(tok.encode("hi there")) == "hi there"
        info = httpx.get(f"{url}/tokenizer_info").json()
        assert info["model_max_length"] == 64 and "<|assistant|>" in info["chat_template"]
        # /tokenize reads special-token names as vLLM does; completions take text as text
        names = httpx.post(f"{url}/tokenize", json={"prompt": f"hi{EOT}"}).json()["tokens"]
        assert names == [*tok.encode("hi"), tok.special_tokens[EOT]]
        long = httpx.post(f"{url}/v1/completions", json={"prompt": [1] * 65, "max_tokens": 1})
        assert long.status_code == 400 and "max_length=64" in long.json()["error"]["message"]


def test_missing_or_broken_harness_is_a_one_line_error(char_run, tmp_path, monkeypatch, capsys):
    from shoshin.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    assert main(["eval", str(char_run), "--tasks", "tiny_mc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not installed" in err and "shoshin[eval]" in err and "\n" not in err
    monkeypatch.delitem(sys.modules, "lm_eval")
    fake = tmp_path / "fake" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('half of it was deleted')\n")
    result = run_cli(
        "eval", str(char_run), "--tasks", "tiny_mc", env={"PYTHONPATH": str(fake.parent)}
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "broken" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_task_data_that_is_not_local_is_a_one_line_error(char_run, tasks, cli):
    (tasks / "remote_task.yaml").write_text(
        "task: remote_task\ndataset_path: shoshin-tests/not-on-this-machine\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{c}}"\ndoc_to_target: 0\n'
    )
    result = cli("eval", str(char_run), "--tasks", "remote_task", "--include-path", str(tasks))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]  # after the harness's own warnings
    assert error.startswith("error: ") and "not on this machine" in error, result.stderr
    assert "--include-path" in error
    no_folder = cli("eval", str(char_run), "--tasks", "tiny_mc", "--include-path", "nowhere")
    assert no_folder.returncode == 2 and "not a folder" in no_folder.stderr
