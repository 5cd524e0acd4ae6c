"""What produced a run: code, environment and data, recorded so a result can always be traced back.

Code is captured twice when it can be: the git repository of the working directory (the user's
project, their config files) and the git checkout shoshin itself is imported from (a practitioner
edits the model code too). For each: commit, branch, dirty flag, the full uncommitted diff saved as
a `.patch` beside the manifest, and the untracked files with content hashes (small source files
are saved as well, so nothing that ran is lost). A code fingerprint (hashes of shoshin's own source
files and of the config file) works with or without git.

    runs/<id>/code/workdir.patch          uncommitted diff of the working directory's repository
    runs/<id>/code/workdir-untracked/     its small untracked source files, as they were
    runs/<id>/code/shoshin.patch          the same for shoshin's source tree, when it is another repo
    runs/<id>/code/shoshin-untracked/
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import shoshin
from shoshin.storage.manifest import (
    CodeFingerprint,
    CodeRecord,
    ConfigFile,
    DataRecord,
    Environment,
    GitState,
    UntrackedFile,
)

# Untracked files with these suffixes and at most this size are copied into the run directory,
# unless their name suggests a secret (listed with their hash all the same).
SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".ipynb"}
SECRET_NAME = re.compile(
    r"secret|credential|passw|api_?key|access_key|private_key|(^|[_.-])tokens?$"
)
MAX_SAVED_FILE = 256 * 1024
MAX_SAVED_TOTAL = 8 * 1024 * 1024
MAX_HASHED_FILE = 64 * 1024 * 1024  # bigger untracked files are listed with their size only
MAX_LISTED = 2000
# Folders whose churn says nothing about the code: caches, virtual environments, MLflow's
# artifacts. The runs folder itself is passed to git_state as `skip` (it may be anywhere).
IGNORED_PARTS = {"mlruns", "__pycache__", ".venv", "venv", ".pytest_cache", ".ruff_cache"}
IGNORED_NAMES = {"mlflow.db", "mlflow.db.lock"}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(args: list[str], cwd: Path, binary: bool = False) -> Any:
    """stdout of a git command (str, or bytes if binary), or None when git or the repo is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if binary else out.stdout.decode("utf-8", "replace").strip()


# An empty tree: what a repository without any commit is diffed against.
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def git_root(path: Path | str) -> Path | None:
    """The top folder of the git work tree containing `path`, or None."""
    path = Path(path)
    top = _git(["rev-parse", "--show-toplevel"], path if path.is_dir() else path.parent)
    return Path(top) if top else None


def git_state(
    cwd: Path | str = ".",
    save_dir: Path | None = None,
    label: str = "workdir",
    skip: tuple[Path, ...] = (),
) -> GitState | None:
    """The git state of the repository containing `cwd`, or None outside git.

    With `save_dir`, the uncommitted diff (against HEAD, staged or not) is written there as
    `<label>.patch` and small untracked source files are copied under `<label>-untracked/`.
    Paths under `skip` (e.g. the runs folder) are left out of the untracked list.
    """
    root = git_root(cwd)
    if root is None:
        return None
    commit = _git(["rev-parse", "--verify", "-q", "HEAD"], root) or None
    branch = _git(["symbolic-ref", "--short", "-q", "HEAD"], root) or None
    patch = _git(["diff", "--binary", commit or EMPTY_TREE], root, binary=True) or b""
    untracked = _untracked(root, skip)
    state = GitState(
        root=str(root),
        commit=commit,
        branch=branch,
        dirty=bool(patch) or bool(untracked),
        patch_sha256=sha256_bytes(patch) if patch else None,
        patch_lines=patch.count(b"\n"),
        untracked=untracked,
    )
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        if patch:
            (save_dir / f"{label}.patch").write_bytes(patch)
            state.patch = f"{save_dir.name}/{label}.patch"  # relative to the run directory
        _save_untracked(root, untracked, save_dir / f"{label}-untracked")
    return state


def _untracked(root: Path, skip: tuple[Path, ...]) -> list[UntrackedFile]:
    out = _git(["ls-files", "--others", "--exclude-standard", "-z"], root, binary=True) or b""
    skip_resolved = [s.resolve() for s in skip]
    files = []
    for raw in sorted(out.split(b"\0")):
        if not raw:
            continue
        rel = raw.decode("utf-8", "replace")
        parts = Path(rel).parts
        if IGNORED_PARTS.intersection(parts) or parts[-1] in IGNORED_NAMES:
            continue
        path = root / rel
        if any(path.resolve().is_relative_to(s) for s in skip_resolved):
            continue
        if len(files) >= MAX_LISTED:
            files.append(UntrackedFile(path="...", truncated=True))
            break
        try:
            size = path.stat().st_size
            digest = sha256_file(path) if size <= MAX_HASHED_FILE else None
        except OSError:  # vanished or unreadable: listed without a hash
            size, digest = None, None
        files.append(UntrackedFile(path=rel, sha256=digest, size=size))
    return files


def _save_untracked(root: Path, files: list[UntrackedFile], folder: Path) -> None:
    total = 0
    for entry in files:
        size = entry.size
        if size is None or entry.truncated or size > MAX_SAVED_FILE:
            continue
        name = Path(entry.path).name.lower()
        if Path(name).suffix not in SOURCE_SUFFIXES or SECRET_NAME.search(Path(name).stem):
            continue
        if total + size > MAX_SAVED_TOTAL:
            continue
        target = folder / entry.path
        try:
            data = (root / entry.path).read_bytes()
        except OSError:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entry.saved = True
        total += size


# -- code fingerprint --------------------------------------------------------------------------


def shoshin_dir() -> Path:
    """The folder of the shoshin package actually imported (a checkout, a copy or site-packages)."""
    return Path(shoshin.__file__).resolve().parent


def source_files(package: Path | None = None) -> dict[str, str]:
    """sha256 of each of shoshin's own source files (.py and preset .yaml), by relative path."""
    package = package or shoshin_dir()
    hashes = {}
    for path in sorted(package.rglob("*")):
        if path.suffix not in (".py", ".yaml") or "__pycache__" in path.parts:
            continue
        hashes[path.relative_to(package).as_posix()] = sha256_file(path)
    return hashes


def code_fingerprint(config_file: str | Path | None = None) -> CodeFingerprint:
    """Hashes of shoshin's source files and of the config file: a code identity without git."""
    files = source_files()
    combined = sha256_bytes(json.dumps(files, sort_keys=True).encode())
    config_entry = None
    if config_file and Path(config_file).is_file():
        config_entry = ConfigFile(
            path=str(Path(config_file).resolve()), sha256=sha256_file(Path(config_file))
        )
    return CodeFingerprint(shoshin_source=combined, files=files, config_file=config_entry)


def code_record(
    run_dir: Path, config_file: str | Path | None = None, skip: tuple[Path, ...] = ()
) -> tuple[GitState | None, CodeRecord]:
    """(git state of the working directory, code record) for a new run; patches go to run_dir/code.

    The code record holds the fingerprint and the git state of shoshin's source tree, which is
    marked `same_as_workdir` when shoshin lives in the working directory's repository.
    """
    code_dir = Path(run_dir) / "code"
    workdir = git_state(os.getcwd(), code_dir, "workdir", skip)
    package = shoshin_dir()
    root = git_root(package)
    if root is None:
        shoshin_git = None
    elif workdir and Path(workdir.root or "").resolve() == root.resolve():
        shoshin_git = GitState(root=str(root), same_as_workdir=True)
    else:
        shoshin_git = git_state(package, code_dir, "shoshin", skip)
    return workdir, CodeRecord(
        shoshin_dir=str(package),
        shoshin_version=shoshin.__version__,
        shoshin_git=shoshin_git,
        fingerprint=code_fingerprint(config_file),
    )


# -- environment -----------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name where the OS tells it, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return platform.processor() or platform.machine()


def installed_packages() -> dict[str, str]:
    """Every installed distribution and its version, from importlib.metadata."""
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name.lower()] = dist.version
    return dict(sorted(packages.items()))


def environment() -> Environment:
    """Python, PyTorch, packages, CPU, threads, GPUs and OS of this process."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Environment(
        python=platform.python_version(),
        python_implementation=platform.python_implementation(),
        executable=sys.executable,
        torch=torch.__version__,
        cuda=torch.version.cuda if gpus else None,
        cudnn=torch.backends.cudnn.version() if gpus else None,
        gpus=gpus,
        gpu_count=len(gpus),
        cpu=cpu_model(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        os=platform.platform(),
        machine=platform.machine(),
        packages=installed_packages(),
    )


# -- data --------------------------------------------------------------------------------------


def data_record(data: Any, cfg: Any) -> DataRecord:
    """What the manifest says about the data: fingerprints, split, token counts, overlap report.

    `data` is a shoshin.data.dataset.PreparedData and `cfg` its DataConfig.
    """
    meta = data.meta
    return DataRecord(
        source=cfg.source,
        kind=data.kind,
        fingerprint=data.fingerprint,
        source_sha256=meta["source_sha256"],
        tokenizer=cfg.tokenizer,
        tokenizer_sha256=meta.get("tokenizer_sha256"),
        vocab_size=data.tokenizer.vocab_size,
        split=meta.get("split") or {},
        documents=meta["documents"],
        tokens=meta["tokens"],
        overlap=meta.get("overlap") or {},
        hf=meta.get("hf"),
    )
