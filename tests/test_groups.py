"""Seed groups: `train --seeds`, groups in runs/show/compare/reproduce, and what compare concludes.

The statistics are held to scipy.stats computed here from the runs' own metrics files; verdicts
are asserted only where the mechanism guarantees them: identical configurations with the same
seeds train identical runs (a difference of exactly 0), and a learning rate of 1e-6 cannot move
the loss in 40 steps while 3e-3 lowers it by far more than seed noise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.stats
from conftest import CTRL_C_IN_SECOND_RUN, _shared_cache, run_cli, write_corpus
from gitrepo import TINY

from shoshin.errors import ShoshinError
from shoshin.runs.compare import compare_runs
from shoshin.runs.compare_view import compare_figure, format_compare
from shoshin.runs.groups import eval_pairs, resolve_subject
from shoshin.runs.store import Run
from shoshin.storage.manifest import read_metrics

STEPS = [*TINY, "train.max_steps=40", "train.eval_interval=20"]


def _final_losses(runs_dir: Path, ids: list[str]) -> list[float]:
    return [[r for r in read_metrics(runs_dir / i) if "val_loss" in r][-1]["val_loss"] for i in ids]


def _group_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("group g-") and first.endswith(" -> 3 runs"), stdout[:300]
    return first.split()[1]


@pytest.fixture(scope="module")
def groups(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Three groups of 3 tiny runs: A (one after another), B (the same, --parallel), C (lr 1e-6)."""
    root = tmp_path_factory.mktemp("groups")
    corpus = write_corpus(root / "corpus.txt")
    env = {"SHOSHIN_CACHE_DIR": str(_shared_cache()), "SHOSHIN_RUNS_DIR": str(root / "runs")}
    made = {}
    for name, extra in (("A", []), ("B", ["--parallel"]), ("C", ["train.lr=1e-6"])):
        args = ["train", "tiny", f"data.source={corpus}", *STEPS, "--seeds", "3", *extra]
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
        made[name] = _group_id(result.stdout)
    return root / "runs", made


@pytest.mark.slow
def test_a_group_is_created_listed_and_shown(groups, monkeypatch):
    runs_dir, ids = groups
    monkeypatch.setenv("SHOSHIN_RUNS_DIR", str(runs_dir))
    manifests = [json.loads((p / "manifest.json").read_text()) for p in runs_dir.iterdir()]
    members = [m for m in manifests if m["group"]["id"] == ids["A"]]
    assert sorted(m["seed"] for m in members) == [1337, 1338, 1339]
    assert all(m["group"]["seeds"] == [1337, 1338, 1339] for m in members)
    assert all(m["command"][-1] == f"train.seed={m['seed']}" for m in members)  # re-trains it alone
    assert all(m["status"] == "completed" for m in members)

    listed = run_cli("runs")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(ids["A"]))
    assert "1337,1338,1339" in row and "3/3 completed" in row and "± " in row
    rows = json.loads(run_cli("runs", "--json").stdout)
    in_a = sorted(r["id"] for r in rows if r["group"] == ids["A"])
    assert in_a == sorted(m["id"] for m in members)

    shown = run_cli("show", ids["A"][:12] if _unique_prefix(ids, "A", 12) else ids["A"])
    assert shown.returncode == 0, shown.stderr
    assert f"group     {ids['A']}" in shown.stdout and "final val loss ↓" in shown.stdout
    assert all(m["id"] in shown.stdout for m in members)
    data = json.loads(run_cli("show", ids["A"], "--json").stdout)
    losses = _final_losses(runs_dir, [r["run"] for r in data["runs"]])
    assert data["statistics"]["final_val_loss"]["mean"] == pytest.approx(sum(losses) / 3)


def _unique_prefix(ids: dict[str, str], name: str, n: int) -> bool:
    return sum(i.startswith(ids[name][:n]) for i in ids.values()) == 1


@pytest.mark.slow
def test_identical_groups_show_no_detectable_difference(groups, monkeypatch):
    runs_dir, ids = groups
    monkeypatch.setenv("SHOSHIN_RUNS_DIR", str(runs_dir))
    result = run_cli("compare", ids["A"], ids["B"], "--json")
    assert result.returncode == 0, result.stderr
    (pair,) = json.loads(result.stdout)["statistics"]
    loss = next(c for c in pair["metrics"] if c["metric"] == "final_val_loss")
    # Sequential and --parallel members with the same seeds and one thread train the same runs.
    assert loss["a"]["values"] == loss["b"]["values"] and loss["difference"] == 0
    assert loss["verdict"] == "no detectable difference at n = 3 (p = 1.00); the means are equal"
    text = run_cli("compare", ids["A"], ids["B"]).stdout
    assert "final val loss: no detectable difference at n = 3" in text


@pytest.mark.slow
def test_a_broken_learning_rate_loses_with_p_below_001_as_scipy_computes_it(groups, monkeypatch):
    runs_dir, ids = groups
    monkeypatch.setenv("SHOSHIN_RUNS_DIR", str(runs_dir))
    report = json.loads(run_cli("compare", ids["A"], ids["C"], "--json").stdout)
    assert report["config"] == {"train.lr": [0.003, 1e-6]}  # the seed is not a difference here
    a_ids, c_ids = (s["runs"] for s in report["subjects"])
    a, c = _final_losses(runs_dir, a_ids), _final_losses(runs_dir, c_ids)
    expected = scipy.stats.ttest_ind(c, a, equal_var=False)
    interval = expected.confidence_interval(0.95)
    (pair,) = report["statistics"]
    loss = next(m for m in pair["metrics"] if m["metric"] == "final_val_loss")
    assert loss["p"] == pytest.approx(expected.pvalue, rel=1e-12) and loss["p"] < 0.01
    assert loss["ci"] == pytest.approx([interval.low, interval.high], rel=1e-12)
    assert loss["difference"] == pytest.approx(sum(c) / 3 - sum(a) / 3)
    assert loss["a"]["sd"] == pytest.approx(scipy.stats.tstd(a))
    assert loss["verdict"].startswith("A is better by ") and "(95% CI, p " in loss["verdict"]

    text = run_cli("compare", ids["A"], ids["C"], "--plot", str(runs_dir / "ac.png")).stdout
    assert (runs_dir / "ac.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = text.splitlines()
    assert lines[0].startswith(f"A  {ids['A']}") and lines[1].startswith(f"B  {ids['C']}")
    assert "result: B against A" in text and "final val loss: A is better by" in text
    assert text.index("result:") < text.index("config (keys that differ)") < text.index("runs:")


@pytest.mark.slow
def test_interrupted_and_missing_members_are_reported_not_averaged(tmp_path, shakespeare_like):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_IN_SECOND_RUN)
    args = ["train", "tiny", f"data.source={shakespeare_like}", *STEPS, "--seeds", "3"]
    cut = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert cut.returncode == 130, cut.stderr
    group = _group_id(cut.stdout)
    manifests = {
        m["seed"]: m
        for m in (
            json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "runs").iterdir()
        )
    }
    assert sorted(manifests) == [1337, 1338]  # the third never started
    assert manifests[1338]["status"] == "interrupted"

    shown = run_cli("show", group)
    assert f"left out: {manifests[1338]['id']} (seed 1338) is interrupted" in shown.stdout
    assert "left out: seed 1339 has no run (it never started)" in shown.stdout
    (loss_row,) = [r for r in shown.stdout.splitlines() if r.startswith("  final val loss ↓")]
    assert "±" not in loss_row, loss_row  # one completed run: its value, no spread
    data = json.loads(run_cli("show", group, "--json").stdout)
    completed = _final_losses(tmp_path / "runs", [manifests[1337]["id"]])
    assert data["statistics"]["final_val_loss"]["values"] == completed  # the completed one only
    assert loss_row.split()[-1] == f"{completed[0]:.4f}"
    listed = run_cli("runs").stdout
    assert "1/3 completed (interrupted, missing)" in listed


def test_a_group_mixing_configurations_is_refused_in_one_line(trained_runs, tmp_path):
    runs = shutil.copytree(trained_runs, tmp_path / "runs", dirs_exist_ok=True)
    a, b = sorted(p.name for p in runs.iterdir() if (p / "manifest.json").is_file())
    for args in (("show", f"{a},{b}"), ("compare", f"{a},{b}", a)):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert f"mixes configurations beyond the seed: train.lr is 0.003 in {a}" in result.stderr


def test_bad_seeds_are_one_line_errors(tmp_path):
    for seeds, message in (
        ("0", "give at least 1 seed"),
        ("1,1", "names a seed twice"),
        ("three", "expected a count (--seeds 3) or a list of seeds (--seeds 1,5,9)"),
    ):
        result = run_cli("train", "tiny", "--seeds", seeds)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_compare_leads_with_the_result_and_folds_the_environment(trained_runs, tmp_path):
    runs = shutil.copytree(trained_runs, tmp_path / "runs", dirs_exist_ok=True)
    a, b = sorted(p for p in runs.iterdir() if (p / "manifest.json").is_file())
    manifest = json.loads((b / "manifest.json").read_text())  # as if `pip install` ran between
    packages = manifest["environment"]["packages"]
    packages.update({f"pkg{i}": "1.0" for i in range(30)})
    (b / "manifest.json").write_text(json.dumps(manifest))
    for run, wins in ((a, 20.0), (b, 22.0)):  # counts recorded as floats print as integers
        (run / "eval").mkdir(exist_ok=True)
        record = {"name": "pairwise.x", "kind": "pairwise", "metrics": {"wins": wins}}
        (run / "eval" / "pairwise.x.json").write_text(json.dumps(record))

    report = compare_runs([Run(a), Run(b)])
    text = format_compare(report)
    lines = text.splitlines()
    assert lines[0].startswith(f"A  {a.name}") and lines[3].startswith("result: B against A")
    assert lines[4].split()[:2] == ["metric", "A"]
    assert "final val loss ↓" in lines[5]  # lower is better, said where the number is
    assert "one run per side cannot separate the change from seed noise" in text
    wins_row = next(line for line in lines if "pairwise.x.wins" in line)
    assert wins_row.split()[2:5] == ["20", "22", "+2"]
    assert "environment: 30 packages differ (pkg0, pkg1, pkg10, pkg11, pkg12, ...)" in text
    assert "pkg29" not in text and len(lines) < 40
    verbose = format_compare(report, verbose=True)
    assert "packages that differ:" in verbose and "pkg29" in verbose


@pytest.mark.slow
def test_the_plot_names_the_groups_and_the_verdict_and_bands_the_seeds(groups):
    runs_dir, ids = groups
    subjects = [resolve_subject(ids[k], runs_dir) for k in ("A", "C")]
    report = compare_runs(subjects)
    fig = compare_figure(subjects, report)
    curves, finals = fig.axes
    verdict = report["statistics"][0]["metrics"][0]["verdict"]
    assert fig._suptitle.get_text() == f"A vs B: {verdict}"
    assert [t.get_text() for t in curves.get_legend().get_texts()] == [
        f"A: {ids['A']}",
        f"B: {ids['C']}",
    ]
    a_runs = [Run(runs_dir / r) for r in report["subjects"][0]["runs"]]
    curves_a = [[r["val_loss"] for r in run.metrics() if "val_loss" in r] for run in a_runs]
    mean_line = curves.get_lines()[0].get_ydata()
    assert list(mean_line) == pytest.approx([sum(v) / 3 for v in zip(*curves_a, strict=True)])
    band = curves.collections[0].get_paths()[0].vertices[:, 1]  # the min-max band of A
    assert min(band) == pytest.approx(min(min(c) for c in curves_a))
    assert max(band) == pytest.approx(max(max(c) for c in curves_a))
    points = finals.collections[0].get_offsets()[:, 1]  # one point per seed
    assert sorted(points) == pytest.approx(sorted(_final_losses(runs_dir, [r.id for r in a_runs])))


@pytest.mark.slow
def test_reproducing_a_group_re_runs_each_member(groups, monkeypatch):
    runs_dir, ids = groups
    monkeypatch.setenv("SHOSHIN_RUNS_DIR", str(runs_dir))
    result = run_cli("reproduce", ids["C"], "--steps", "10")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    lines = result.stdout.splitlines()
    members = [line.split()[1] for line in lines if line.startswith("member ")]
    assert len(members) == 3 and len(set(members)) == 3
    assert sum(line.startswith("REPRODUCED: 10 steps") for line in lines) == 3
    for member in members:
        manifest = json.loads((runs_dir / member / "manifest.json").read_text())
        assert manifest["group"]["id"] == ids["C"] and len(manifest["reproductions"]) == 1


@pytest.mark.slow
def test_eval_of_a_group_scores_each_member_and_pairs_groups_in_seed_order(groups, monkeypatch):
    runs_dir, ids = groups
    monkeypatch.setenv("SHOSHIN_RUNS_DIR", str(runs_dir))
    a, c = resolve_subject(ids["A"], runs_dir), resolve_subject(ids["C"], runs_dir)
    pairs = eval_pairs(ids["A"], ids["C"], runs_dir)
    assert pairs == [(str(x.path), str(y.path)) for x, y in zip(a.runs, c.runs, strict=True)]
    assert [Run(Path(p)).manifest.seed for p, _ in pairs] == [1337, 1338, 1339]
    one = str(c.runs[0].path)
    assert [b for _, b in eval_pairs(ids["A"], one, runs_dir)] == [one] * 3  # all against one
    two = ",".join(r.id for r in c.runs[:2])
    with pytest.raises(ShoshinError, match="has 3 completed runs and .* 2"):
        eval_pairs(ids["A"], two, runs_dir)

    before = {r.id: (r.path / "eval" / "heldout.json").stat().st_mtime_ns for r in a.runs}
    result = run_cli("eval", ids["A"], "--max-documents", "2")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("== ")] == [
        f"== {r.path}" for r in a.runs
    ]
    summary = result.stdout.split("over the group (mean ± sd (n)):")[1]
    assert "(3)" in summary  # each metric over the three members
    for run in a.runs:  # and each member's own record was written again
        assert (run.path / "eval" / "heldout.json").stat().st_mtime_ns > before[run.id]
