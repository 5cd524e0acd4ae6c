"""What `shoshin train` draws on a real terminal: the progress bar never runs into a line printed
after it, is not drawn again after the held-out table, and Ctrl-C says "interrupted" once, with
the resume command last. The CLI runs under a pseudo-terminal, as a user's shell would run it."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

QUICK = [
    "model.n_layer=1",
    "model.n_embd=16",
    "model.n_head=2",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_iters=1",
    "train.sample_tokens=0",
    "train.calibrate=false",
]
BAR = re.compile(r"\d+%\|")


def run_in_terminal(args: list[str], interrupt_at: str | None = None, timeout: float = 240):
    """Run `python -m shoshin ARGS` with stdin, stdout and stderr on a pseudo-terminal 100 columns
    wide; with `interrupt_at`, send SIGINT (Ctrl-C) once that text appears. Returns the exit
    status and everything the terminal received."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoshin", *args], stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    received, interrupted, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the process closed its end
                    break
                if not chunk:
                    break
                received += chunk
            elif proc.poll() is not None:
                break
            if interrupt_at and not interrupted and interrupt_at.encode() in received:
                proc.send_signal(signal.SIGINT)
                interrupted = True
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return proc.returncode, received.decode("utf-8", "replace")


def screen_lines(raw: str) -> list[str]:
    """The lines as they end up on screen: each `\\r` returns to the line's start, so only what
    was written after the last one is kept (a bar redrawn in place leaves its last state)."""
    return [line.split("\r")[-1] for line in raw.replace("\r\n", "\n").split("\n")]


@pytest.mark.slow
def test_the_bar_ends_its_line_and_is_drawn_once_at_the_end(tmp_path, shakespeare_like):
    code, raw = run_in_terminal(
        ["train", "tiny", f"data.source={shakespeare_like}", "train.max_steps=12", *QUICK]
    )
    assert code == 0, raw
    lines = screen_lines(raw)
    held = [i for i, line in enumerate(lines) if "held-out" in line]
    assert len(held) == 1 and lines[held[0]].startswith("held-out: "), raw
    assert BAR.search(lines[held[0] - 1]) and "12/12" in lines[held[0] - 1]  # the bar, complete
    after = lines[held[0] :]
    assert not any(BAR.search(line) for line in after), after  # no second 100% bar
    for line in lines:  # every other line printed while the bar ran starts a line of its own
        if line.startswith(("step ", "warning: ", "held-out")):
            assert not BAR.search(line), line


@pytest.mark.slow
def test_ctrl_c_says_interrupted_once_and_the_resume_hint_comes_last(tmp_path, shakespeare_like):
    code, raw = run_in_terminal(
        [
            "train",
            "tiny",
            f"data.source={shakespeare_like}",
            "train.max_steps=100000",
            "train.eval_interval=5",
            *QUICK,
        ],
        interrupt_at="step 5/",
    )
    assert code == 130, raw
    lines = [line for line in screen_lines(raw) if line.strip()]
    assert len([line for line in lines if line.startswith("interrupted")]) == 1, raw
    assert re.fullmatch(
        r"interrupted at step \d+; resume with: shoshin train --resume \S+", lines[-1]
    ), raw
    assert BAR.search(lines[-2]), raw  # the bar's last state, on its own line above
    last_hint = raw.rindex("interrupted at step")
    assert not BAR.search(raw[last_hint:]), raw  # nothing redrawn after the hint
