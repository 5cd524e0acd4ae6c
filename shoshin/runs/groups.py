"""Seed groups: runs of one configuration that differ only in `train.seed`, read as one subject.

A group is written nowhere but in its members' manifests (`group: {id, seeds, command}`, see
shoshin.storage.manifest.GroupLink), so it lives and dies with its runs. Every planned seed is recorded
in each member, so a member that never started is still reported as missing. A group can also be
named on the spot as runs joined by commas (`RUN1,RUN2,RUN3`), e.g. seeds trained one by one.

Reading a group is strict about what makes it a group: its runs must share one configuration
apart from the seed (and the run's label), or it is refused in one line naming the first key
that differs.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoshin.errors import ShoshinError
from shoshin.runs.mlflow_sink import flatten
from shoshin.runs.store import Run, effective_status, readable_runs, resolve_run
from shoshin.storage.manifest import Manifest

PREFIX = "g-"  # run ids start with a date, so a group id never reads as a run prefix
FREE_KEYS = ("train.seed", "name")  # what members of one group may differ in


def new_group_id(name: str) -> str:
    """A fresh group id: g-<date>-<time>-<name>-<4 hex digits>."""
    return f"{PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(2)}"


@dataclass
class Group:
    """The runs of one seed group, ordered by seed, and the seeds it planned."""

    id: str
    runs: list[Run]
    manifests: list[Manifest]
    seeds: list[int] = field(default_factory=list)  # planned (recorded groups) or found (ad hoc)
    command: list[str] = field(default_factory=list)

    def statuses(self) -> list[str]:
        """Each member's status as `shoshin runs` shows it (a dead 'running' run is 'died')."""
        return [effective_status(m, r.path) for r, m in zip(self.runs, self.manifests, strict=True)]

    def completed(self) -> list[tuple[Run, Manifest]]:
        """The members that finished: the only ones statistics are computed over."""
        pairs = zip(self.runs, self.manifests, self.statuses(), strict=True)
        return [(r, m) for r, m, status in pairs if status == "completed"]

    def missing_seeds(self) -> list[int]:
        """Planned seeds with no run at all (a member that failed before it made its folder)."""
        found = {m.seed for m in self.manifests}
        return [s for s in self.seeds if s not in found]

    def left_out(self) -> list[str]:
        """One line per planned member that statistics leave out, and why."""
        lines = []
        for run, m, status in zip(self.runs, self.manifests, self.statuses(), strict=True):
            if status != "completed":
                why = f": {m.error}" if m.error else ""
                lines.append(f"{run.id} (seed {m.seed}) is {status}{why}")
        lines += [f"seed {s} has no run (it never started)" for s in self.missing_seeds()]
        return lines


def groups_in(root: Path) -> list[Group]:
    """Every recorded group under `root`, oldest first."""
    members: dict[str, list[tuple[Run, Manifest]]] = {}
    for run, m in readable_runs(root):
        if m.group is not None and m.group.id:
            members.setdefault(m.group.id, []).append((run, m))
    return [_group(gid, pairs) for gid, pairs in sorted(members.items())]


def _group(group_id: str, pairs: list[tuple[Run, Manifest]]) -> Group:
    pairs = sorted(pairs, key=lambda p: (p[1].seed is None, p[1].seed, p[0].id))
    link = pairs[0][1].group
    seeds = list(link.seeds) if link is not None and link.seeds else [m.seed for _, m in pairs]
    command = list(link.command) if link is not None else []
    return Group(group_id, [r for r, _ in pairs], [m for _, m in pairs], seeds, command)


def find_group(ref: str, root: Path) -> Group | None:
    """The recorded group whose id is `ref` or starts with it; None when `ref` names no group."""
    if not ref.startswith(PREFIX):
        return None
    groups = groups_in(root)
    exact = [g for g in groups if g.id == ref]
    matches = exact or [g for g in groups if g.id.startswith(ref)]
    if len(matches) > 1:
        names = ", ".join(g.id for g in matches[:5])
        raise ShoshinError(f"group prefix {ref!r} is ambiguous: {names}")
    if not matches:
        raise ShoshinError(f"no group {ref!r} in {root} (see: shoshin runs)")
    return matches[0]


def resolve_subject(ref: str, root: Path) -> Run | Group:
    """A run, a recorded group (its id or a unique prefix), or runs joined by commas as a group.

    A group whose runs differ in more than the seed is refused (see check_one_config).
    """
    if "," in ref:
        refs = [r for r in ref.split(",") if r]
        runs = [resolve_run(r, root) for r in refs]
        if len({r.path.resolve() for r in runs}) < len(runs):
            raise ShoshinError(f"{ref} names the same run twice")
        group = _group(ref, [(r, r.manifest) for r in runs])
        group.seeds = [m.seed for m in group.manifests]  # what was named, not a recorded plan
        group.command = []
    else:
        found = find_group(ref, root)
        if found is None:
            return resolve_run(ref, root)
        group = found
    check_one_config(group)
    return group


def check_one_config(group: Group) -> None:
    """Refuse, in one line, a group whose runs' configs differ in more than train.seed."""
    configs = [flatten(run.config.to_dict()) for run in group.runs]
    first = configs[0]
    for run, config in zip(group.runs[1:], configs[1:], strict=True):
        for key in sorted(set(first) | set(config)):
            if key not in FREE_KEYS and first.get(key) != config.get(key):
                raise ShoshinError(
                    f"group {group.id} mixes configurations beyond the seed: {key} is "
                    f"{first.get(key)!r} in {group.runs[0].id} but {config.get(key)!r} in "
                    f"{run.id}; a group's runs may differ only in train.seed"
                )


def eval_pairs(ref: str, against: str | None, root: Path) -> list[tuple[str, str | None]]:
    """What `shoshin eval` scores: a run (or checkpoint), or each completed member of a group;
    with `against`, what each is compared with (a group against a group: members paired in seed
    order; against one run: every member against it)."""

    def members(name: str) -> list[str]:
        if name == "latest" or ("," not in name and not name.startswith(PREFIX)):
            return [name]  # a run or a Hugging Face checkpoint: resolved by the evaluation
        found = resolve_subject(name, root)
        if isinstance(found, Group):
            return [str(run.path) for run, _ in found.completed()] or [str(found.runs[0].path)]
        return [name]

    subjects = members(ref)
    if not against:
        return [(s, None) for s in subjects]
    others = members(against)
    if len(others) == 1:
        others = others * len(subjects)
    if len(others) != len(subjects):
        raise ShoshinError(
            f"{ref} has {len(subjects)} completed runs and {against} {len(others)}; --against "
            "pairs them one to one: give groups of the same size, or one run"
        )
    return list(zip(subjects, others, strict=True))
