"""lm-evaluation-harness tasks against the model, served in-process by `shoshin serve`'s own app.

Nothing of the harness is re-implemented: the model is served on 127.0.0.1 (a free port, for the
duration of the evaluation) and the harness talks to it exactly as it talks to `shoshin serve` or
vLLM (`local-completions` for log-likelihood, rolling log-likelihood and generation tasks,
`local-chat-completions` with the run's chat template for generation tasks), with the model's own
tokenizer through the server's `/tokenize`, `/detokenize` and `/tokenizer_info`
(`tokenizer_backend=remote`), so char and custom-BPE runs work as well as exported ones.

The window: the harness is told `max_length` = the model's context window (GPT `block_size`), so it
cuts long contexts on the left itself, as it does for a Hugging Face model, and never sends the
server a prompt the model cannot see whole; a model without a window (LSTM) gets the harness's
default of 2048. Generation requests reserve `max_gen_toks` (at most half the window) of it.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from shoshin.data.tokenizers import Tokenizer
from shoshin.errors import ShoshinError

NO_WINDOW_MAX_LENGTH = 2048  # the harness's own default, for models without a position window
MAX_GEN_TOKS = 256  # the harness's default generation length, capped at half the window
BATCH = 16  # prompts per completions request (the server decodes them together)
CHAT_CONCURRENCY = 8  # chat requests in flight at once (chat completions take one prompt each)
INSTALL = "pip install 'shoshin[eval]'"


@dataclass
class TaskResult:
    """One task's (or group's) outcome: metrics as the harness names them ("acc,none"), its
    version, few-shot count and sample counts, and the per-sample records."""

    task: str
    metrics: dict[str, Any]
    version: Any = None
    num_fewshot: int | None = None
    samples: dict[str, int] = field(default_factory=dict)  # {"original": N, "effective": M}
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class HarnessResult:
    """What an evaluation produced, with what was asked (`settings`) and the harness version."""

    tasks: list[TaskResult]
    harness_version: str
    settings: dict[str, Any]


def import_harness():
    """The `lm_eval` package, or a one-line error when it is missing or broken."""
    try:
        import lm_eval
        import lm_eval.evaluator
        import lm_eval.models.openai_completions  # noqa: F401  (registers local-completions)
        import lm_eval.tasks
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "lm_eval":
            raise ShoshinError(f"the lm-evaluation-harness is not installed; {INSTALL}") from None
        raise ShoshinError(
            f"the lm-evaluation-harness cannot start: {exc}; {INSTALL} reinstalls what it needs"
        ) from None
    except Exception as exc:  # a damaged installation fails in any way while importing
        raise ShoshinError(
            f"the lm-evaluation-harness installation is broken ({type(exc).__name__}: "
            f"{_first_line(exc)}); reinstall it: pip install --force-reinstall 'lm-eval[api]'"
        ) from None
    return lm_eval


def harness_version() -> str:
    """The installed lm-eval version."""
    from importlib.metadata import version

    return version("lm_eval")


def task_manager(tasks: Sequence[str], include_path: str | Path | None = None):
    """A TaskManager that knows every requested task, or a one-line error naming the unknown one.

    Indexing the harness's thousands of built-in tasks takes many seconds, so when every task is
    found in `include_path` alone the built-ins are not indexed.
    """
    lm_eval = import_harness()
    if include_path is not None and not Path(include_path).is_dir():
        raise ShoshinError(f"--include-path {include_path} is not a folder of task YAML files")
    TaskManager = lm_eval.tasks.TaskManager
    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ShoshinError(
                f"no lm-evaluation-harness task named {task!r}{hint} "
                "(a folder of your own task YAML files goes in --include-path)"
            )
    return manager


def run_tasks(
    model: nn.Module,
    tokenizer: Tokenizer,
    model_id: str,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    chat: bool = False,
    log: Callable[[str], None] = print,
) -> HarnessResult:
    """Evaluate `model` on harness `tasks` through the in-process server; see the module docstring.

    chat=True uses `local-chat-completions` with the chat template (generation tasks only).
    """
    from shoshin.serving import ServeConfig, background_server, create_app

    if not tasks:
        raise ShoshinError("name at least one task, e.g. --tasks hellaswag")
    lm_eval = import_harness()
    manager = task_manager(tasks, include_path)
    window = model.context_window
    max_length = window or NO_WINDOW_MAX_LENGTH
    max_gen_toks = min(MAX_GEN_TOKS, max_length // 2)
    settings: dict[str, Any] = {
        "tasks": list(tasks),
        "include_path": str(include_path) if include_path else None,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "model": "local-chat-completions" if chat else "local-completions",
        "max_length": max_length,
        "max_gen_toks": max_gen_toks,
        "tokenizer_backend": None if chat else "remote",
    }
    serve_config = ServeConfig(max_batch=BATCH, max_concurrent=4 * BATCH, max_tokens=max_length)
    with background_server(create_app(model, tokenizer, model_id, serve_config)) as url:
        model_args: dict[str, Any] = {
            "model": model_id,
            "max_length": max_length,
            "max_gen_toks": max_gen_toks,
            "timeout": 3600,  # a big model on a CPU answers slowly; the server is on this machine
        }
        if chat:
            model_args |= {
                "base_url": f"{url}/v1/chat/completions",
                "num_concurrent": CHAT_CONCURRENCY,
            }
        else:
            model_args |= {
                "base_url": f"{url}/v1/completions",
                "tokenizer_backend": "remote",
                "batch_size": BATCH,
            }
        log(f"lm-evaluation-harness {harness_version()}: {', '.join(tasks)} ({settings['model']})")
        try:
            results = lm_eval.evaluator.simple_evaluate(
                model=settings["model"],
                model_args=model_args,
                tasks=list(tasks),
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                apply_chat_template=chat,
                log_samples=True,
            )
        except ShoshinError:
            raise
        except Exception as exc:
            raise ShoshinError(_explain(exc)) from None
    return HarnessResult(_task_results(results), harness_version(), settings)


def _task_results(results: dict[str, Any]) -> list[TaskResult]:
    from lm_eval.utils import handle_non_serializable

    samples = results.get("samples") or {}
    out = []
    for task, metrics in results["results"].items():
        records = [
            json.loads(json.dumps(s, default=handle_non_serializable))
            for s in samples.get(task, [])
        ]
        out.append(
            TaskResult(
                task=task,
                metrics={
                    k: v for k, v in metrics.items() if k not in ("name", "alias", "sample_len")
                },
                version=(results.get("versions") or {}).get(task),
                num_fewshot=(results.get("n-shot") or {}).get(task),
                samples=(results.get("n-samples") or {}).get(task) or {},
                higher_is_better=(results.get("higher_is_better") or {}).get(task) or {},
                records=records,
            )
        )
    return out


def _explain(exc: BaseException) -> str:
    """One line for what went wrong inside the harness: missing data, a refused request, a task."""
    text = _first_line(exc)
    kind = type(exc).__name__
    offline = ("Couldn't reach", "OfflineModeIsEnabled", "LocalEntryNotFound", "offline mode")
    if isinstance(exc, ConnectionError) or any(s in f"{kind}: {text}" for s in offline):
        return (
            f"a task's data set is not on this machine and cannot be downloaded ({text}); "
            "run with network access once (the data is then cached), or write a local task "
            "folder for --include-path"
        )
    if kind == "HTTPError" or "Client Error" in text:
        try:  # the server says why in OpenAI's error format
            text = exc.response.json()["error"]["message"]
        except Exception:
            pass
        return f"the model server refused a request of the harness: {text}"
    return f"the lm-evaluation-harness failed: {kind}: {text}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
