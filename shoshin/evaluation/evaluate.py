"""`shoshin eval`: held-out scores, harness tasks and a pairwise comparison, recorded in the run.

Also the one call the trainer makes at the end of training (`heldout_at_end_of_training`), so the
numbers logged then are the numbers `shoshin eval RUN` gives for the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from shoshin.data.tokenizers import Tokenizer
from shoshin.errors import ShoshinError
from shoshin.evaluation.heldout import (
    MAX_DOCUMENTS,
    MAX_TOKENS,
    Document,
    HeldOutScores,
    documents_from_tokens,
    score_documents,
)
from shoshin.evaluation.record import EvalRecord, mirror_to_mlflow, write_record
from shoshin.runs.store import Run

Log = Callable[[str], None]


@dataclass
class Subject:
    """What is evaluated: a model, its tokenizer, and its run (None for a checkpoint folder)."""

    name: str
    model: nn.Module
    tokenizer: Tokenizer
    run: Run | None = None
    checkpoint: str | None = None  # the checkpoint's folder name, e.g. step-0000500


def load_subject(src: str, checkpoint: str = "latest", runs_dir: str | None = None) -> Subject:
    """A run's checkpoint (or a Hugging Face checkpoint folder / hub id), ready to evaluate."""
    from shoshin.loading import load_run, resolve_source
    from shoshin.training.checkpoint import checkpoint_path

    source = resolve_source(src, runs_dir)
    if isinstance(source, Run):
        model, tokenizer = load_run(source, checkpoint)
        name = checkpoint_path(source.path / "checkpoints", checkpoint).name
        return Subject(source.id, model, tokenizer, source, name)
    from shoshin.loading import load

    model, tokenizer = load(source)
    return Subject(Path(source).name or str(source), model, tokenizer)


def heldout_documents(
    subject: Subject,
    data: str | None = None,
    limit: int = MAX_DOCUMENTS,
    max_tokens: int | None = MAX_TOKENS,
    log: Log = print,
) -> tuple[list[Document], str]:
    """The documents to score and where they come from: the first `limit` documents of `data`
    (a source `data.source` accepts), else of the run's validation split (up to `max_tokens`
    of its tokens, as at the end of training)."""
    if data is not None:
        from shoshin.data.sources import load_corpus

        corpus = load_corpus(data, limit)
        return corpus.documents, f"{len(corpus.documents)} documents of {corpus.description}"
    if subject.run is None:
        raise ShoshinError(
            f"{subject.name} is not a run, so it has no validation split; "
            "give held-out data with --data FILE.jsonl"
        )
    from shoshin.data.dataset import prepare_data
    from shoshin.data.tokenizers import BpeTokenizer

    config = subject.run.config.data
    pretrained = subject.tokenizer if config.tokenizer == "pretrained" else None
    if pretrained is not None and not isinstance(pretrained, BpeTokenizer):
        raise ShoshinError(f"run {subject.name} has no BPE tokenizer to re-read its data with")
    data_ = prepare_data(config, log=log, tokenizer=pretrained)
    docs = documents_from_tokens(data_.tokenizer, data_.val.tokens, limit, max_tokens)
    return docs, f"{len(docs)} validation documents of {config.source}"


def heldout_record(
    scores: HeldOutScores,
    source: str,
    checkpoint: str | None,
    command: Sequence[str],
    errors: dict[str, float] | None = None,
) -> EvalRecord:
    return EvalRecord(
        name="heldout",
        kind="heldout",
        metrics=scores.metrics(),
        checkpoint=checkpoint,
        command=list(command),
        details={"data": source, **scores.to_dict(), "standard_errors": errors or {}},
    )


def format_heldout(
    scores: HeldOutScores, source: str, errors: dict[str, float] | None = None
) -> str:
    """The held-out scores as a few lines of text (with `errors`: their standard errors)."""
    lines = [f"held-out: {source}"]
    rows = [["role", "loss", "ppl", "bits/byte", "tokens"]]
    for role, tally in sorted(scores.roles.items()):
        s = tally.summary()
        rows.append(
            [role, *(f"{s[k]:.4f}" if s[k] is not None else "-" for k in ("loss", "ppl", "bits_per_byte")),
             str(s["tokens"])]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    if scores.kind == "chat":
        first, later = scores.first_reply_token.summary(), scores.later_reply_tokens.summary()
        if first["loss"] is not None:
            later_text = f"{later['loss']:.4f}" if later["loss"] is not None else "-"
            lines.append(
                f"  reply tokens: first {first['loss']:.4f}, later {later_text} (loss per token)"
            )
    if errors:
        parts = ", ".join(f"{k.replace('_', ' ')} ± {v:.4f}" for k, v in errors.items())
        lines.append(
            f"  standard errors ({scores.kind == 'chat' and 'assistant' or 'text'}; bootstrap "
            f"over the {len(scores.per_document)} documents): {parts}"
        )
    return "\n".join(lines)


def heldout_at_end_of_training(model: nn.Module, data: Any, run: Run, log: Log = print) -> None:
    """Score the first validation documents with the trained model, record `eval/heldout.json`
    and log the numbers (the trainer's one call; `shoshin eval RUN` gives the same numbers)."""
    from shoshin.training.checkpoint import read_index

    try:
        docs = documents_from_tokens(data.tokenizer, data.val.tokens)
        scores = score_documents(model, data.tokenizer, docs)
    except ShoshinError as exc:
        log(f"held-out scores skipped: {exc}")
        return
    source = f"{len(docs)} validation documents of {run.config.data.source}"
    checkpoint = read_index(run.path / "checkpoints").get("latest")
    path = write_record(run.path, heldout_record(scores, source, checkpoint, ["train"]))
    log(format_heldout(scores, source))
    if run.mirror is not None:  # training's own MLflow run is still open
        row = {f"eval.heldout.{k}": v for k, v in scores.metrics().items()}
        run.mirror.log_metrics({"step": int(checkpoint.split("-")[1]) if checkpoint else 0, **row})
        run.mirror.log_artifact(path, "eval")


def evaluate(
    subject: Subject,
    command: Sequence[str],
    tasks: Sequence[str] = (),
    include_path: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    chat: bool = False,
    data: str | None = None,
    max_documents: int = MAX_DOCUMENTS,
    max_tokens: int | None = MAX_TOKENS,
    against: Subject | None = None,
    params: Any = None,
    prompts: int = 20,
    out: str | None = None,
    log: Log = print,
) -> list[EvalRecord]:
    """Everything `shoshin eval` asked for; records written to the run's eval/ folder (when the
    subject is a run) and mirrored to MLflow when the run mirrors there."""
    records: list[tuple[EvalRecord, list[dict] | None]] = []
    has_data = data is not None or subject.run is not None
    if against is not None:
        limits = (max_documents, max_tokens)
        records += _pairwise(subject, against, data, limits, params, prompts, out, command, log)
    elif has_data:
        docs, source = heldout_documents(subject, data, max_documents, max_tokens, log)
        scores = score_documents(subject.model, subject.tokenizer, docs)
        errors = scores.standard_errors()
        log(format_heldout(scores, source, errors))
        record = heldout_record(scores, source, subject.checkpoint, command, errors)
        records.append((record, None))
    elif not tasks:
        raise ShoshinError(
            f"{subject.name} is not a run: give held-out data (--data FILE.jsonl) or --tasks"
        )
    if tasks:
        from shoshin.evaluation.harness import run_tasks

        result = run_tasks(
            subject.model,
            subject.tokenizer,
            subject.name,
            tasks,
            include_path,
            limit,
            num_fewshot,
            chat,
            log,
        )
        for task in result.tasks:
            metrics = _task_metrics(task.metrics)
            log(f"{task.task} (version {task.version}, {task.samples.get('effective', '?')} samples): "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))  # fmt: skip
            record = EvalRecord(
                name=f"lm-eval.{task.task}",
                kind="lm-eval",
                metrics=metrics,
                checkpoint=subject.checkpoint,
                command=list(command),
                details={
                    "task": task.task,
                    "version": task.version,
                    "num_fewshot": task.num_fewshot,
                    "samples": task.samples,
                    "all_metrics": task.metrics,
                    "higher_is_better": task.higher_is_better,
                    "harness_version": result.harness_version,
                    "settings": result.settings,
                },
            )
            records.append((record, task.records))
    if subject.run is None:
        log("(not a run: nothing recorded)")
        return [r for r, _ in records]
    paths = [write_record(subject.run.path, r, s) for r, s in records]
    log(f"recorded in {subject.run.path / 'eval'}")
    mirror_to_mlflow(subject.run, paths, log)
    return [r for r, _ in records]


def _task_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The harness's "acc,none" as "acc" (other filters as "acc[filter]"); no standard errors."""
    out = {}
    for key, value in metrics.items():
        name, _, filt = key.partition(",")
        if name.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        out[name if filt in ("none", "") else f"{name}[{filt}]"] = float(value)
    return out


def _pairwise(subject, against, data, limits, params, prompts, out, command, log):
    from shoshin.evaluation.pairwise import Contestant, compare_pair, interval_lines, to_markdown
    from shoshin.runs.files import atomic_write_text

    docs, source = heldout_documents(subject, data, *limits, log=log)
    result = compare_pair(
        Contestant(subject.name, subject.model, subject.tokenizer),
        Contestant(against.name, against.model, against.tokenizer),
        docs,
        params,
        prompts,
    )
    errors = result.scores[0].standard_errors()
    log(format_heldout(result.scores[0], source, errors))
    log(
        f"pairwise: {subject.name} gives {result.wins} of {result.replies} reference replies the "
        f"higher likelihood, {against.name} {result.losses} ({result.ties} ties): "
        f"win rate {result.win_rate:.1%}"
    )
    for line in interval_lines(result):
        log(f"  {line}")
    markdown = to_markdown(result)
    name = f"pairwise.{against.name}"
    target = (
        Path(out) if out else (subject.run.path / "eval" / f"{name}.md" if subject.run else None)
    )
    if target is not None:
        atomic_write_text(target, markdown)
        log(f"replies side by side: {target}")
    record = EvalRecord(
        name=name,
        kind="pairwise",
        metrics=result.metrics(),
        checkpoint=subject.checkpoint,
        command=list(command),
        details={"data": source, "against_checkpoint": against.checkpoint, **result.details()},
    )
    heldout = heldout_record(result.scores[0], source, subject.checkpoint, command, errors)
    return [(heldout, None), (record, None)]
