"""`shoshin eval`: validation loss, held-out scores, harness tasks and a pairwise comparison,
recorded in the run.

For a run, `shoshin eval RUN` first prints its validation loss on the whole validation split, the
one definition (shoshin.training.validation) that training ends with: the same number for the same
checkpoint. The held-out scores are another measure: each document scored from its own start, per
role for chat (`shoshin.generation.scoring`, which the trainer also calls at the end of training,
so the held-out numbers logged then are the numbers `shoshin eval RUN` gives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from shoshin.data.tokenizers import Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.scoring import (
    MAX_DOCUMENTS,
    MAX_TOKENS,
    Document,
    documents_from_tokens,
    format_heldout,
    heldout_record,
    score_documents,
)
from shoshin.runs.mlflow_sink import mirror_to_mlflow
from shoshin.runs.store import Run
from shoshin.storage.evaluations import EvalRecord, write_record

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
    from shoshin.storage.checkpoint import checkpoint_path

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
    data_ = _run_data(subject, log)
    docs = documents_from_tokens(data_.tokenizer, data_.val.tokens, limit, max_tokens)
    return docs, f"{len(docs)} validation documents of {subject.run.config.data.source}"


def _run_data(subject: Subject, log: Log) -> Any:
    """The run's prepared corpus (PreparedData), re-read (or read from the cache) as it trained."""
    from shoshin.data.dataset import prepare_data
    from shoshin.data.tokenizers import BpeTokenizer

    assert subject.run is not None
    config = subject.run.config.data
    pretrained = subject.tokenizer if config.tokenizer == "pretrained" else None
    if pretrained is not None and not isinstance(pretrained, BpeTokenizer):
        raise ShoshinError(f"run {subject.name} has no BPE tokenizer to re-read its data with")
    return prepare_data(config, log=log, tokenizer=pretrained)


def validation_record(subject: Subject, command: Sequence[str], log: Log = print) -> EvalRecord:
    """The run's validation loss on its whole validation split (shoshin.training.validation: the
    figure training ends with), logged and returned as the `val` record."""
    from shoshin.training.validation import per_unit, validation_loss

    assert subject.run is not None
    config = subject.run.config
    data = _run_data(subject, log)
    T = config.model.block_size
    device = next(subject.model.parameters()).device
    loss = validation_loss(subject.model, data.val, T, config.train.batch_size, device)
    metrics = {"loss": loss}
    bits = (
        per_unit(loss, data.meta, config.data.tokenizer) if config.data.loss_on == "all" else None
    )
    if bits is not None:
        metrics[f"bits_per_{bits[0]}"] = bits[1]
    extra = f", {bits[1]:.4f} bits per {bits[0]}" if bits is not None else ""
    log(f"validation loss (whole split, windows of {T} tokens): {loss:.4f}{extra}")
    return EvalRecord(
        name="val",
        kind="val",
        metrics=metrics,
        checkpoint=subject.checkpoint,
        command=list(command),
        details={
            "data": config.data.source,
            "block_size": T,
            "split_tokens": int(data.val.tokens.size),
        },
    )


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
        if data is None:  # the run's own split: first its validation loss, as training ends
            records.append((validation_record(subject, command, log), None))
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
    from shoshin.storage.files import atomic_write_text

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
