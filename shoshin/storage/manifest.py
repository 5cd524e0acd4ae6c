"""The typed record of a run: `manifest.json` and `metrics.jsonl` (rows typed as `MetricsRow`),
read and written here only.

The manifest is one JSON object. Its top level holds who the run is and how it ended (identity,
command, times, status, results); the facts gathered about it are sections, each a dataclass
below: the code (`git`, `code`), the `environment`, the `data`, the `estimate` made as it started,
the `base_model` a fine-tuning run started from, the `adapter` a LoRA run trains, its resumes, and
what an experiment adds (a `matrix` cell, a `reproduction`, an `lr_find` result).

Reading is tolerant of older files (a missing key takes its default; a key this version does not
know is kept and written back) and strict about damaged ones: a file that is not JSON, not an
object, or holds a value of the wrong type raises `DamagedRecord` with the reason in one line, so
`shoshin runs` can list that run as broken and every other run stays usable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Required, TypedDict

from shoshin.errors import ShoshinError
from shoshin.storage.files import add_path, atomic_write_json, atomic_write_text

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"

# The statuses shoshin writes; `shoshin runs` adds "died" (a running run whose process is gone)
# and "broken" (a manifest that cannot be read).
STATUSES = ("running", "completed", "failed", "interrupted")


class DamagedRecord(ShoshinError):
    """A run file that exists but cannot be read as what it should be."""


# -- sections ------------------------------------------------------------------------------


@dataclass
class UntrackedFile:
    """A file git does not track, as it was when the run started."""

    path: str = ""
    sha256: str | None = None
    size: int | None = None
    saved: bool = False  # copied under code/<label>-untracked/
    truncated: bool = False  # the list stopped here (too many files)


@dataclass
class GitState:
    """The git state of one repository when the run started."""

    root: str | None = None
    commit: str | None = None
    branch: str | None = None
    dirty: bool = False
    patch: str | None = None  # the uncommitted diff, relative to the run directory
    patch_sha256: str | None = None
    patch_lines: int = 0
    untracked: list[UntrackedFile] = field(default_factory=list)
    same_as_workdir: bool = False  # shoshin's source lives in the working directory's repository


@dataclass
class ConfigFile:
    path: str = ""
    sha256: str = ""


@dataclass
class CodeFingerprint:
    """Hashes of shoshin's source files and of the config file: a code identity without git."""

    shoshin_source: str = ""  # one hash over all of `files`
    files: dict[str, str] = field(default_factory=dict)  # sha256 by path inside the package
    config_file: ConfigFile | None = None


@dataclass
class CodeRecord:
    """The shoshin code that ran: where it was imported from, its git state and fingerprint."""

    shoshin_dir: str = ""
    shoshin_version: str = ""
    shoshin_git: GitState | None = None
    fingerprint: CodeFingerprint | None = None


@dataclass
class Environment:
    """Python, PyTorch, packages, CPU, threads, GPUs and OS of the training process."""

    python: str = ""
    python_implementation: str = ""
    executable: str = ""
    torch: str = ""
    cuda: str | None = None
    cudnn: int | None = None
    gpus: list[str] = field(default_factory=list)
    gpu_count: int = 0
    cpu: str = ""
    cpu_count: int | None = None
    torch_threads: int | None = None
    os: str = ""
    machine: str = ""
    packages: dict[str, str] = field(default_factory=dict)


@dataclass
class DataRecord:
    """The data a run trained on: fingerprints, split, token counts and the overlap report."""

    source: str = ""
    kind: str = ""  # text | chat
    fingerprint: str = ""  # of the tokenized data (source bytes, tokenizer and split settings)
    source_sha256: str | None = None
    tokenizer: str = ""
    tokenizer_sha256: str | None = None
    vocab_size: int = 0
    split: dict[str, Any] = field(default_factory=dict)  # method, seed, fraction, digest ...
    documents: dict[str, int] = field(default_factory=dict)  # train / val
    tokens: dict[str, int] = field(default_factory=dict)  # train / val
    overlap: dict[str, Any] = field(default_factory=dict)  # see shoshin.data.leakage
    hf: dict[str, Any] | None = None  # an hf: dataset's name, revision, split, column ...


@dataclass
class Estimate:
    """Everything `shoshin estimate` reports; saved as `estimate` in each run's manifest."""

    params: int = 0
    matmul_params: int = 0  # N in 6N: parameters used in matrix multiplies
    flops_per_token: float = 0.0  # training (forward + backward)
    attention_flops_per_token: float = 0.0  # the part of flops_per_token that is not 6N
    tokens_per_step: int = 0
    steps: int = 0
    total_tokens: int = 0
    total_flops: float = 0.0
    memory: dict[str, int] = field(default_factory=dict)  # bytes, see memory_estimate()
    trainable_params: int | None = None  # what the optimizer updates: LoRA adapters, or all
    step_seconds: float | None = None  # calibrated mean time of one optimizer step
    eval_batch_seconds: float | None = None  # calibrated time of one evaluation batch
    calibration_steps: int = 0
    predicted_train_seconds: float | None = None  # optimizer steps only (a run's `elapsed`)
    predicted_eval_seconds: float | None = None
    predicted_total_seconds: float | None = None
    achieved_flops_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BaseCheckpoint:
    """The pretrained checkpoint a fine-tuning run started from."""

    source: str = ""  # as the user gave it: a hub id or a folder
    weights_sha256: str = ""
    path: str = ""
    model_type: str = ""
    weights: str = ""
    params: int = 0


@dataclass
class Adapter:
    """The LoRA adapters a run trains instead of its base weights (lora.rank > 0)."""

    method: str = "lora"
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    targets: str = ""  # attention, mlp or both
    target_modules: list[str] = field(default_factory=list)


@dataclass
class Resume:
    """One `train --resume` of the run: where it picked up, when, with which code."""

    step: int = 0
    time: str = ""
    code_fingerprint: str | None = None
    changes: dict[str, list[Any]] = field(default_factory=dict)  # key: [before, after]


@dataclass
class MlflowLink:
    """Where the run is mirrored in MLflow (tracking.mlflow=true)."""

    uri: str = ""
    run_id: str = ""
    experiment_id: str = ""


@dataclass
class MatrixCell:
    """The cell of a `shoshin bench matrix` this run trained."""

    id: str = ""
    cell: str = ""
    arch: str = ""
    data: str = ""


@dataclass
class GroupLink:
    """The seed group a run belongs to (`shoshin train ... --seeds N`): the group's id, every seed
    it planned (so a member that never started is still missed) and the command that made it."""

    id: str = ""
    seeds: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    parallel: int = 1  # members trained at once
    mlflow_run_id: str = ""  # the group's parent run in MLflow (tracking.mlflow=true)


@dataclass
class Reproduction:
    """The outcome of `shoshin reproduce`: `of` the original run, by the re-run `run`."""

    reproduced: bool = False
    steps: int = 0
    max_abs_delta: float = 0.0
    of: str = ""
    run: str = ""
    diverged_at: int | None = None
    forced: bool = False


@dataclass
class LrFindRecord:
    """The result of a `shoshin lr-find` range test."""

    start_lr: float = 0.0
    end_lr: float = 0.0
    planned_steps: int = 0
    suggested_lr: float = 0.0
    rule: str = ""
    steepest_lr: float = 0.0
    min_smoothed_loss: float = 0.0
    smoothing: float = 0.0
    plot: str = ""
    diverged_at_lr: float | None = None


@dataclass
class Manifest:
    """A run's manifest.json. Every field (of every section) has a default, so older or partial
    manifests read as they are."""

    # identity and command
    id: str = ""
    name: str = ""
    kind: str = "train"  # train | lr-find
    command: list[str] = field(default_factory=list)
    cwd: str | None = None
    hostname: str | None = None
    pid: int | None = None
    seed: int | None = None
    seeds: dict[str, int] = field(default_factory=dict)
    # times and status (one of STATUSES)
    status: str = "unknown"
    start_time: str | None = None
    heartbeat: str | None = None  # last sign of life of the writer (ISO time), see store.py
    end_time: str | None = None
    error: str | None = None
    traceback: str | None = None  # file name in the run directory
    # what trained, where
    arch: str | None = None
    params: int | None = None
    trainable_params: int | None = None  # LoRA: the adapters; else the same as params
    device: str | None = None
    threads: int | None = None
    world_size: int = 1
    # results
    steps: int = 0
    planned_steps: int | None = None  # train.max_steps
    stopped_on_budget: bool = False  # train.max_minutes ran out before planned_steps
    elapsed_seconds: float | None = None  # training time, evaluation excluded
    tokens_seen: int = 0
    peak_rss_bytes: int | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    # provenance
    git: GitState | None = None  # the working directory's repository
    code: CodeRecord | None = None
    environment: Environment | None = None
    data: DataRecord | None = None
    estimate: Estimate | None = None
    base_model: BaseCheckpoint | None = None
    adapter: Adapter | None = None
    resumed: list[Resume] = field(default_factory=list)
    mlflow: MlflowLink | None = None
    # what experiments add
    matrix: MatrixCell | None = None
    group: GroupLink | None = None
    reproduction_of: str | None = None
    reproduction_steps: int | None = None
    reproduction: Reproduction | None = None
    reproductions: list[Reproduction] = field(default_factory=list)
    lr_find: LrFindRecord | None = None
    # keys this version of shoshin does not know (from a newer one): kept when the file is rewritten
    extra: dict[str, Any] = field(default_factory=dict)


_FIELDS = {f.name for f in dataclasses.fields(Manifest)} - {"extra"}


@functools.cache
def _validator() -> Any:
    # pydantic and the validator it builds cost ~0.3 s: paid by the commands that read a
    # manifest, not by every import of this module (`shoshin --help` must start fast).
    import pydantic

    return pydantic.TypeAdapter(Manifest)


def manifest_from_dict(data: Any, where: str = MANIFEST) -> Manifest:
    """A Manifest from parsed JSON; DamagedRecord (one line, naming `where`) if it is not one."""
    if not isinstance(data, dict):
        raise DamagedRecord(f"{where} holds {_json_kind(data)}, not a JSON object")
    import pydantic

    known = {k: v for k, v in data.items() if k in _FIELDS}
    try:
        manifest = _validator().validate_python(known)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        msg = first["msg"].removeprefix("Input ")
        got = f", got {json.dumps(first['input'])[:40]}" if first["type"] != "missing" else ""
        raise DamagedRecord(f"{where}: {key} {msg[0].lower()}{msg[1:]}{got}") from None
    manifest.extra = {k: v for k, v in data.items() if k not in _FIELDS}
    return manifest


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    kinds = {list: "a list", str: "a string", bool: "true or false", int: "a number"}
    return kinds.get(type(value), "a number")


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    """The JSON object of a manifest (unknown keys read from the file included)."""
    data = dataclasses.asdict(manifest)
    extra = data.pop("extra")
    return {**data, **extra}


def read_manifest(run_dir: Path) -> Manifest:
    """The manifest of the run in `run_dir`; DamagedRecord if it is missing or damaged."""
    path = Path(run_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedRecord(f"{MANIFEST} is missing") from None
    except OSError as exc:
        raise DamagedRecord(f"{MANIFEST} cannot be read ({exc.strerror})") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise DamagedRecord(f"{MANIFEST} is not valid JSON ({str(exc)[:80]})") from None
    manifest = manifest_from_dict(data)
    manifest.id = manifest.id or Path(run_dir).name
    return manifest


def write_manifest(run_dir: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically: a reader sees the old file or the new one, never half."""
    atomic_write_json(Path(run_dir) / MANIFEST, manifest_to_dict(manifest))


def updated(manifest: Manifest, **fields: Any) -> Manifest:
    """`manifest` with `fields` set; sections may be given as dataclasses or as plain dicts.

    The result is validated like a file being read, so a wrong type fails here, at the writer.
    """
    unknown = set(fields) - _FIELDS
    if unknown:
        raise TypeError(f"not manifest fields: {', '.join(sorted(unknown))}")
    data = manifest_to_dict(manifest)
    for key, value in fields.items():
        data[key] = _plain(value)
    try:
        return manifest_from_dict(data)
    except DamagedRecord as exc:  # a bug in the writer, not damage on disk
        raise TypeError(str(exc)) from None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# -- metrics -------------------------------------------------------------------------------


class MetricsRow(TypedDict, total=False):
    """One line of metrics.jsonl: the numbers logged at a step. Every value is a number; keys
    beyond these (`val_bits_per_char`, `val_bits_per_byte`) may appear."""

    step: Required[int]
    train_loss: float  # training steps
    lr: float
    tokens_per_sec: float
    elapsed: float  # seconds of training so far
    val_loss: float  # evaluation steps
    val_ppl: float
    smoothed_loss: float  # lr-find


def read_metrics(run_dir: Path) -> list[MetricsRow]:
    """The rows of metrics.jsonl: one object per logged step, each with an integer `step`.

    Reading stops at the first row that is not one (a line cut short by a killed process, or
    damage): everything before it is still good.
    """
    path = Path(run_dir) / METRICS
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DamagedRecord(f"{METRICS} cannot be read ({exc.strerror})") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not _is_metrics_row(row):
            break
        rows.append(row)
    return rows


def _is_metrics_row(row: Any) -> bool:
    if not isinstance(row, dict) or type(row.get("step")) is not int:
        return False
    return all(
        isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in row.items()
        if k != "step"
    )


def append_metrics(run_dir: Path, row: MetricsRow) -> None:
    """Add one row to metrics.jsonl (a row cut short by a full disk is where reading stops)."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    except OSError as exc:
        add_path(exc, path)
        raise


def write_metrics(run_dir: Path, rows: list[MetricsRow]) -> None:
    """Replace metrics.jsonl with `rows` atomically (used when a resume drops later rows)."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
