"""`shoshin train CONFIG --seeds N`: one configuration trained once per seed, as one group.

Each member is an ordinary run whose manifest names the group (shoshin.runs.groups reads them
back). Members train one after another in this process, or with `--parallel` as separate
`shoshin train` processes at once, the CPU threads split between them; their output is printed
line by line with the seed in front. A member that fails does not stop the others: the group
ends by saying which members did not complete, and they are never averaged in.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from shoshin.config import Config
from shoshin.errors import ShoshinError
from shoshin.runs.groups import Group, find_group, groups_in, new_group_id
from shoshin.runs.mlflow_sink import flatten, open_store
from shoshin.storage.manifest import GroupLink

Log = Callable[[str], None]
LINK_OPTION = "--group-link"  # how a parallel member learns its group (shoshin.cli.parser's)


def parse_seeds(text: str, base: int) -> list[int]:
    """`--seeds 3` -> [base, base+1, base+2]; `--seeds 1,5,9` -> [1, 5, 9]."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ShoshinError(f"--seeds {text}: give at least 1 seed")
            return [base + i for i in range(count)]
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ShoshinError(
            f"--seeds {text}: expected a count (--seeds 3) or a list of seeds (--seeds 1,5,9)"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise ShoshinError(
            f"--seeds {text} names a seed twice; a group's runs need different seeds"
        )
    return seeds


def member_config(config: Config, seed: int) -> Config:
    """The group's config with train.seed set: the only way members differ."""
    member = copy.deepcopy(config)
    member.train.seed = seed
    return member


def thread_share(processes: int) -> int:
    """CPU threads each of `processes` members may use: the threads this command has, split."""
    total = os.environ.get("OMP_NUM_THREADS")
    available = int(total) if total and total.isdigit() else (os.cpu_count() or 1)
    return max(1, available // processes)


def train_group(
    config: Config,
    seeds: Sequence[int],
    runs_dir: Path,
    member_args: Sequence[str],
    parallel: int = 0,
    log: Log = print,
) -> Group:
    """Train `config` once per seed as one group; returns the group as recorded.

    `member_args` is a member's `shoshin train` command line without its seed (CONFIG and
    key=value overrides): each member records it with `train.seed=S` appended, the command that
    re-trains that member alone. `parallel` > 1 trains that many members at once.
    """
    name = config.name or config.model.arch
    command = ["shoshin", "train", *member_args, "--seeds", ",".join(map(str, seeds))]
    link = GroupLink(new_group_id(name), list(seeds), command, max(1, parallel))
    link.mlflow_run_id = open_parent(config, link, log)
    log(f"group {link.id} -> {len(seeds)} runs")
    try:
        if parallel > 1:
            _train_parallel(seeds, runs_dir, member_args, link, parallel, log)
        else:
            _train_sequential(config, seeds, runs_dir, member_args, link, log)
    finally:
        group = find_group(link.id, runs_dir) if _any_member(runs_dir, link.id) else None
        close_parent(config, link, group, log)
    if group is None:
        raise ShoshinError(f"group {link.id}: no member got as far as making its run")
    return group


def _any_member(runs_dir: Path, group_id: str) -> bool:
    return any(g.id == group_id for g in groups_in(runs_dir))


def _train_sequential(
    config: Config,
    seeds: Sequence[int],
    runs_dir: Path,
    member_args: Sequence[str],
    link: GroupLink,
    log: Log,
) -> None:
    from shoshin.training.runner import train

    for i, seed in enumerate(seeds, start=1):
        log(f"[{i}/{len(seeds)}] seed {seed}")
        command = ["shoshin", "train", *member_args, f"train.seed={seed}"]
        try:
            train(member_config(config, seed), runs_dir, command, log, manifest={"group": link})
        except ShoshinError as exc:  # recorded in the member's run; the others still train
            log(f"seed {seed} failed: {exc}")


def _train_parallel(
    seeds: Sequence[int],
    runs_dir: Path,
    member_args: Sequence[str],
    link: GroupLink,
    parallel: int,
    log: Log,
) -> None:
    """Members as `shoshin train` processes, at most `parallel` at once, threads split."""
    threads = thread_share(min(parallel, len(seeds)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SHOSHIN_RUNS_DIR": str(runs_dir)}
    log(f"{min(parallel, len(seeds))} processes at once, {threads} thread(s) each")
    pending = list(seeds)
    running: dict[int, tuple[subprocess.Popen, threading.Thread]] = {}
    lock = threading.Lock()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                seed = pending.pop(0)
                argv = [*member_args, f"train.seed={seed}", LINK_OPTION, json.dumps(asdict(link))]
                proc = subprocess.Popen(
                    [sys.executable, "-m", "shoshin", "train", *argv],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                )
                pump = threading.Thread(target=_relay, args=(proc, f"[seed {seed}] ", log, lock))
                pump.start()
                running[seed] = (proc, pump)
            for seed, (proc, pump) in list(running.items()):
                if proc.poll() is not None:
                    pump.join()
                    del running[seed]
                    if proc.returncode:
                        log(f"seed {seed} ended with exit status {proc.returncode}")
            time.sleep(0.1)
    except KeyboardInterrupt:
        for proc, _ in running.values():  # they got the Ctrl-C too: let them record it
            proc.wait()
        raise


def _relay(proc: subprocess.Popen, prefix: str, log: Log, lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        with lock:
            log(prefix + line.rstrip("\n"))


# -- the MLflow mirror: the group as a parent run, its members nested under it --------------


def open_parent(config: Config, link: GroupLink, log: Log) -> str:
    """Create the group's parent run in MLflow (tracking.mlflow=true); its id, or "" if none.

    Members find it in their manifest's group link and nest under it (mlflow.parentRunId).
    """
    tracking = config.tracking
    if not tracking.mlflow:
        return ""
    try:
        client, experiment_id = open_store(tracking.mlflow_uri, tracking.mlflow_experiment)
        parent = client.create_run(
            experiment_id,
            run_name=link.id,
            tags={
                "shoshin.group_id": link.id,
                "shoshin.group.seeds": ",".join(map(str, link.seeds)),
            },
        )
        params = {k: v for k, v in flatten(config.to_dict()).items() if k != "train.seed"}
        for key, value in params.items():
            client.log_param(parent.info.run_id, key, str(value))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log(f"warning: cannot open MLflow store {tracking.mlflow_uri} ({first}); not mirroring")
        return ""
    return parent.info.run_id


def close_parent(config: Config, link: GroupLink, group: Group | None, log: Log) -> None:
    """Log the group statistics (mean, sd, n of each metric over completed members) on the parent
    run and end it: FINISHED when every planned member completed, else FAILED."""
    if not link.mlflow_run_id:
        return
    from shoshin.runs.compare import group_values
    from shoshin.stats import summarize

    tracking = config.tracking
    try:
        client, _ = open_store(tracking.mlflow_uri, tracking.mlflow_experiment)
        completed = group.completed() if group is not None else []
        for metric, values in group_values(completed).items():
            s = summarize(values)
            client.log_metric(link.mlflow_run_id, f"{metric}.mean", s.mean)
            if s.sd is not None:
                client.log_metric(link.mlflow_run_id, f"{metric}.sd", s.sd)
            client.log_metric(link.mlflow_run_id, f"{metric}.n", s.n)
        client.log_metric(link.mlflow_run_id, "runs_completed", len(completed))
        client.log_metric(link.mlflow_run_id, "runs_planned", len(link.seeds))
        status = "FINISHED" if len(completed) == len(link.seeds) else "FAILED"
        client.set_terminated(link.mlflow_run_id, status)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log(f"warning: the group's MLflow run was not closed ({first})")
