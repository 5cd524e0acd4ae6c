"""Held-out scores (per role, bits per byte, first reply token) held to direct forward passes; the
end of training and `shoshin eval` agree; records in show, compare (with deltas), bench matrix and
MLflow; the judge-free pairwise comparison; checkpoint sources and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hf_tiny import make_gpt2, write_chat
from serving_tiny import CHATS, one_torch_thread, tiny_chat_model  # noqa: F401

from shoshin.config import ModelConfig
from shoshin.data.chat import render_chat
from shoshin.data.dataset import prepare_data
from shoshin.data.tokenizers import EOT, CharTokenizer
from shoshin.generation.engine import Engine
from shoshin.generation.scoring import (
    documents_from_tokens,
    render_document,
    score_documents,
    token_logprobs,
)
from shoshin.loading import load
from shoshin.models import build_model
from shoshin.runs.store import Run

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
DOCS = [[{"role": r, "content": c} for r, c in chat] for chat in CHATS]


def _forward_logprobs(model, ids: list[int]) -> list[float | None]:
    with torch.no_grad():
        lp = model(torch.tensor([ids]))[0].float().log_softmax(-1)
    return [None] + [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


def test_heldout_scores_equal_a_direct_forward_pass_per_role():
    model, tok = tiny_chat_model()
    docs = [[{"role": "system", "content": "be kind."}, *d] for d in DOCS]
    scores = score_documents(model, tok, docs)
    nll = {"system": 0.0, "user": 0.0, "assistant": 0.0}
    count = dict.fromkeys(nll, 0)
    size = dict.fromkeys(nll, 0)
    first, later = [], []
    for doc in docs:
        ids = [tok.special_tokens[EOT]]  # a document starts after <|endoftext|>, as in training
        lps = None
        spans = []
        for m in doc:
            piece = render_chat(tok, [m])[0]  # <|role|> words <|end|>
            spans.append((m, len(ids) + 1, len(ids) + len(piece)))
            ids += piece
        lps = _forward_logprobs(model, ids)
        for m, start, stop in spans:
            targets = [-lps[t] for t in range(start, stop)]  # the words and <|end|>
            nll[m["role"]] += sum(targets)
            count[m["role"]] += len(targets)
            size[m["role"]] += len(m["content"].encode())
            if m["role"] == "assistant":
                first.append(targets[0])
                later += targets[1:]
    for role in nll:
        summary = scores.roles[role].summary()
        assert summary["loss"] == pytest.approx(nll[role] / count[role], abs=1e-5)
        assert summary["bits_per_byte"] == pytest.approx(
            nll[role] / math.log(2) / size[role], abs=1e-5
        )
        assert summary["tokens"] == count[role]
    metrics = scores.metrics()
    assert metrics["loss"] == scores.roles["assistant"].summary()["loss"]  # the headline
    assert metrics["ppl"] == pytest.approx(math.exp(metrics["loss"]))
    assert metrics["first_token_loss"] == pytest.approx(sum(first) / len(first), abs=1e-5)
    assert metrics["later_tokens_loss"] == pytest.approx(sum(later) / len(later), abs=1e-5)
    assert metrics["user_loss"] == pytest.approx(nll["user"] / count["user"], abs=1e-5)
    assert [len(r) for r in scores.replies] == [1] * len(docs)


def test_long_sequences_are_scored_once_each_with_half_a_window_of_context():
    torch.manual_seed(0)
    window = 16
    model = build_model(
        ModelConfig(arch="gpt", n_layer=1, n_head=2, n_embd=16, block_size=window, vocab_size=11)
    ).eval()
    ids = torch.randint(0, 11, (53,)).tolist()
    (got,) = token_logprobs(Engine(model), [ids])
    assert got[0] is None and all(g is not None for g in got[1:])
    for t in range(1, len(ids)):
        # the score of token t is its log-probability after some window that ends at t and holds
        # at least half a window of context (or everything before t)
        contexts = range(max(0, t - window + 1), t - min(t, window // 2) + 1)
        candidates = [_forward_logprobs(model, ids[s : t + 1])[-1] for s in contexts]
        assert any(abs(c - got[t]) < 1e-5 for c in candidates), t
    assert got[:window] == pytest.approx(_forward_logprobs(model, ids[:window]))


def test_documents_come_back_from_a_tokenized_split():
    _, tok = tiny_chat_model()
    eot = tok.special_tokens[EOT]
    stream = [t for d in DOCS for t in render_chat(tok, d)[0] + [eot]]
    assert documents_from_tokens(tok, stream) == DOCS
    assert documents_from_tokens(tok, stream, limit=2) == DOCS[:2]
    first = len(render_chat(tok, DOCS[0])[0]) + 1
    assert documents_from_tokens(tok, stream, max_tokens=first + 3) == DOCS[:1]
    assert documents_from_tokens(tok, stream, max_tokens=1) == DOCS[:1]  # never none
    text = CharTokenizer(list("abc "), [EOT])
    ids = text.encode("ab c") + [4] + text.encode("cab") + [4]
    assert documents_from_tokens(text, ids) == ["ab c", "cab"]
    ids, spans = render_document(text, "cab")
    assert ids == [4, 2, 0, 1, 4] and (spans[0].start, spans[0].stop, spans[0].bytes) == (1, 5, 3)


@pytest.fixture
def chat_runs(tmp_path, cli):
    """Two tiny chat runs on the same conversations (different seeds and lengths)."""
    data = write_chat(tmp_path / "chat.jsonl")
    runs = []
    for seed, steps in ((0, 30), (1, 12)):
        result = cli(
            "train", "tiny", f"data.source={data}", f"train.max_steps={steps}",
            f"train.seed={seed}", "train.sample_tokens=0", "train.eval_interval=30", env=ONE_THREAD,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "held-out: 5 validation documents" in result.stdout
        runs.append(result.stdout.split("run ")[1].split()[0])
    return data, runs


def _named(stdout: str) -> dict[str, dict]:
    """`shoshin eval --json`'s records by name (a run's: val, then heldout, then the others)."""
    return {r["name"]: r for r in json.loads(stdout)}


@pytest.mark.slow
def test_eval_records_show_compare_and_pairwise(chat_runs, cli, tmp_path):
    data, (a, b) = chat_runs
    run_a = tmp_path / "runs" / a
    at_end = json.loads((run_a / "eval" / "heldout.json").read_text())
    assert at_end["command"] == ["train"] and at_end["checkpoint"] == "step-0000030"
    evaluated = cli("eval", a, "--json", env=ONE_THREAD)
    assert evaluated.returncode == 0, evaluated.stderr
    record = _named(evaluated.stdout)["heldout"]  # after the whole-split "val" record
    assert record["metrics"] == pytest.approx(at_end["metrics"], abs=1e-6)  # the same numbers
    assert record["details"]["roles"]["assistant"]["tokens"] > 0

    shown = cli("show", a)
    assert "heldout" in shown.stdout and "bits_per_byte" in shown.stdout
    compared = cli("compare", a, b)
    assert compared.returncode == 0, compared.stderr
    line = next(x for x in compared.stdout.splitlines() if x.strip().startswith("heldout.loss"))
    model_a, tok_a = load(run_a)
    model_b, tok_b = load(tmp_path / "runs" / b)
    report = json.loads(cli("compare", a, b, "--json").stdout)
    loss_a, loss_b = (m["eval"]["heldout.loss"] for m in report["metrics"])
    assert report["metrics"][1]["delta_eval"]["heldout.loss"] == pytest.approx(loss_b - loss_a)
    assert f" {loss_b - loss_a:+.4f} " in line  # the result table's B - A column

    out = tmp_path / "pair.md"
    pair = cli("eval", a, "--against", b, "--prompts", "2", "--out", str(out), env=ONE_THREAD)
    assert pair.returncode == 0, pair.stderr
    record = json.loads((run_a / "eval" / f"pairwise.{b}.json").read_text())
    m = record["metrics"]
    docs = json.loads((run_a / "eval" / "heldout.json").read_text())["details"]["documents"]
    assert docs == 5
    # the win rate is the comparison of the two models' likelihoods of each reference reply
    held = prepare_data(Run(run_a).config.data, log=lambda _: None)
    conversations = documents_from_tokens(held.tokenizer, held.val.tokens)
    sa, sb = (
        score_documents(model_a, tok_a, conversations),
        score_documents(model_b, tok_b, conversations),
    )
    pairs = [
        (x, y)
        for ra, rb in zip(sa.replies, sb.replies, strict=True)
        for x, y in zip(ra, rb, strict=True)
    ]
    assert m["replies"] == len(pairs) and m["wins"] == sum(x > y for x, y in pairs)
    assert m["win_rate"] == pytest.approx((m["wins"] + 0.5 * m["ties"]) / m["replies"])
    # the paired intervals resample whole conversations: held to a bootstrap computed here
    paired = {k: np.array(v) for k, v in record["details"]["per_conversation"].items()}
    assert paired["a_bits"].sum() == pytest.approx(-sum(x for x, _ in pairs) / math.log(2))
    assert paired["b_bits"].sum() == pytest.approx(-sum(y for _, y in pairs) / math.log(2))
    saved = (paired["b_bits"].sum() - paired["a_bits"].sum()) / paired["bytes"].sum()
    intervals = record["details"]["intervals"]
    assert intervals["bits_per_byte_saved"]["value"] == pytest.approx(saved)
    assert m["bits_per_byte_saved"] == pytest.approx(saved)
    assert intervals["win_rate"]["value"] == pytest.approx(m["win_rate"])
    n = len(paired["bytes"])
    picks = np.random.default_rng(1).integers(0, n, (20_000, n))
    resampled = (paired["b_bits"][picks].sum(1) - paired["a_bits"][picks].sum(1)) / paired["bytes"][
        picks
    ].sum(1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    got = intervals["bits_per_byte_saved"]
    assert got["low"] == pytest.approx(low, abs=0.15 * (high - low))
    assert got["high"] == pytest.approx(high, abs=0.15 * (high - low))
    assert "paired bootstrap interval" in pair.stdout and "win rate of" in pair.stdout
    text = out.read_text()
    assert f"# {a} vs {b}" in text and text.count("**reference reply**") == 2
    assert f"**{a}**" in text and f"**{b}**" in text
    again = tmp_path / "again.md"
    cli("eval", a, "--against", b, "--prompts", "2", "--out", str(again), env=ONE_THREAD)
    assert again.read_text() == text  # seeded: the same replies
    itself = cli("eval", a, "--against", a, "--prompts", "1", "--json", env=ONE_THREAD)
    same = json.loads(itself.stdout)[-1]  # the pairwise record comes last
    assert (
        same["metrics"]["ties"] == same["metrics"]["replies"] and same["metrics"]["win_rate"] == 0.5
    )


@pytest.mark.slow
def test_matrix_leaderboard_lists_the_eval_records(tmp_path, cli):
    data = write_chat(tmp_path / "chat.jsonl")
    args = ("bench", "matrix", "--arch", "tiny", "--data", str(data), "--steps", "5", "--out", "m")
    assert cli(*args, env=ONE_THREAD).returncode == 0
    (cell,) = (tmp_path / "runs").iterdir()
    board = (tmp_path / "m" / "leaderboard.md").read_text()
    assert "heldout.loss" in board and "heldout.bits_per_byte" in board
    result = cli("eval", cell.name, "--max-documents", "1", "--json", env=ONE_THREAD)
    record = _named(result.stdout)["heldout"]
    assert cli(*args, env=ONE_THREAD).returncode == 0  # finished cells are kept; board rewritten
    board = (tmp_path / "m" / "leaderboard.md").read_text()
    assert f"{record['metrics']['loss']:.4f}" in board
    cells = json.loads((tmp_path / "m" / "leaderboard.json").read_text())["cells"]
    assert cells[0]["eval"]["heldout.loss"] == pytest.approx(record["metrics"]["loss"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_eval_is_mirrored_to_mlflow(tmp_path, cli):
    import mlflow

    data = write_chat(tmp_path / "chat.jsonl")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = cli(
        "train", "tiny", f"data.source={data}", "train.max_steps=5", "train.sample_tokens=0",
        "tracking.mlflow=true", f"tracking.mlflow_uri={uri}", env=ONE_THREAD,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert cli("eval", run.name, "--max-documents", "1", env=ONE_THREAD).returncode == 0
    mlflow_id = json.loads((run / "manifest.json").read_text())["mlflow"]["run_id"]
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(mlflow_id, "eval.heldout.loss")
    assert len(history) == 2 and {h.step for h in history} == {5}  # end of training, then eval
    latest = json.loads((run / "eval" / "heldout.json").read_text())["metrics"]["loss"]
    assert any(h.value == pytest.approx(latest) for h in history)
    artifacts = [a.path for a in client.list_artifacts(mlflow_id, "eval")]
    assert "eval/heldout.json" in artifacts


def test_checkpoint_sources_and_bad_input(tmp_path, cli, shakespeare_like):
    folder = make_gpt2(tmp_path / "gpt2")
    missing = cli("eval", str(folder))
    assert missing.returncode == 2 and "--data" in missing.stderr
    assert missing.stderr.count("\n") == 1
    scored = cli("eval", str(folder), "--data", str(shakespeare_like), "--json", env=ONE_THREAD)
    assert scored.returncode == 0, scored.stderr
    (record,) = json.loads(scored.stdout)
    assert record["details"]["kind"] == "text" and record["metrics"]["bits_per_byte"] > 0
    assert "nothing recorded" in scored.stderr
    chat = write_chat(tmp_path / "chat.jsonl")
    no_roles = cli("eval", str(folder), "--data", str(chat))
    assert no_roles.returncode == 2 and "no chat role tokens" in no_roles.stderr
    assert cli("eval", "no-such-run").returncode == 2
    assert "at least 1" in cli("eval", str(folder), "--max-documents", "0").stderr
