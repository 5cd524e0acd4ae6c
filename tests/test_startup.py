"""Commands that never touch a model never import PyTorch: `--help`, `runs`, `show`, `config` and a
mistyped key start in a fraction of the time. Run in a fresh interpreter, since this one has torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from shoshin.config import load_config
from shoshin.runs.store import create_run

PROBE = """
import contextlib, io, json, sys
from shoshin.cli import build_parser, main

build_parser()
seen = {"parser": "torch" in sys.modules}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = main(argv)
        except SystemExit as exc:  # --help
            status = exc.code
    seen[" ".join(argv)] = ["torch" in sys.modules, status]
print(json.dumps(seen))
"""


def test_commands_that_touch_no_model_do_not_import_torch(tmp_path: Path):
    runs = tmp_path / "runs"
    run = create_run(load_config("tiny", []), runs, ["shoshin", "train", "tiny"])
    commands = [
        ["--help"],
        ["sample", "--help"],  # the precision help is computed only when shown ...
        ["runs", "--runs-dir", str(runs)],
        ["show", run.id, "--runs-dir", str(runs)],  # (not latest: it has no checkpoint)
        ["config"],
        ["config", "tiny", "train.lr=1e-3"],
        ["config", "model.n_layr=2"],  # a mistyped key: one line, status 2
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(commands[2:])],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    seen = json.loads(out.stdout)
    assert seen.pop("parser") is False
    assert seen == {
        "runs --runs-dir " + str(runs): [False, 0],
        f"show {run.id} --runs-dir {runs}": [False, 0],
        "config": [False, 0],
        "config tiny train.lr=1e-3": [False, 0],
        "config model.n_layr=2": [False, 2],
    }
    for argv in commands[:2]:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps([argv])],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        torch_imported, status = json.loads(out.stdout)[" ".join(argv)]
        assert status == 0
        # ... where it describes this CPU, which needs PyTorch; the top-level help does not.
        assert torch_imported is (argv[0] == "sample"), argv
