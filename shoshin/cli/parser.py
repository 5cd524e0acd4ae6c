"""The `shoshin` command line: one subcommand per step of the user's story.

The parser, generated where it can be: the config keys and sampling options come from their
declarations (shoshin.config, shoshin.generation.params), so `--help` never drifts from them. Each
subcommand names its function in shoshin.cli.commands (`func`), imported only once the arguments
are parsed: `--help` and a usage error never import the commands' libraries.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from shoshin.config import preset_names
from shoshin.generation.params import SURFACE_DEFAULTS, cli_options
from shoshin.storage.text import clean_text

LINK_OPTION = "--group-link"  # how `train --seeds --parallel` tells a member its group (hidden)

# -- CONFIG [key=value ...]: one declaration for every command that takes a config ------------


def add_config_arguments(
    p: argparse.ArgumentParser, default: str | None = None, config: bool = True
) -> None:
    """CONFIG (a preset or YAML file) and key=value overrides; `config=False`: overrides only."""
    if config:
        fallback = f" (default: {default})" if default else ""
        p.add_argument(
            "config",
            nargs="?",
            metavar="CONFIG",
            help=f"a preset ({', '.join(preset_names())}) or a YAML file{fallback}",
        )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides such as train.max_steps=500 (every key: shoshin config)",
    )


class _Lazy:
    """A help value computed when the help is shown (argparse fills `%(name)s` with str(value)),
    so that building the parser does not import PyTorch to describe this CPU."""

    def __init__(self, make: Callable[[], str]):
        self.make = make

    def __str__(self) -> str:
        return self.make()


def _fastest_on_this_cpu() -> str:
    from shoshin.generation.precision import precision_help

    return precision_help()


def _int4_group_size() -> str:
    from shoshin.generation.quantize import INT4_GROUP_SIZE

    return str(INT4_GROUP_SIZE)


def _add_precision_options(parser: argparse.ArgumentParser) -> None:
    """--dtype, --quantize (with what is fastest on this CPU: shoshin.device) and --device."""
    dtype = parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "auto"],
        help="weights and activations (fp32 is exact: the naive reference's tokens; auto: the one "
        "measured fastest here); %(fastest)s",
    )
    dtype.fastest = _Lazy(_fastest_on_this_cpu)
    quantize = parser.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        default=None,
        help="int8 weights (per output channel) or int4 weights (groups of %(group)s inputs); "
        "their quality cost is in docs/BENCHMARKS.md",
    )
    quantize.group = _Lazy(_int4_group_size)
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where the model runs (auto: CUDA when there is a GPU, else CPU)",
    )


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """One option per sampling field (shoshin.generation.params.SamplingParams declares them)."""
    for name, kind, default, help, metavar in cli_options():
        flag = "--" + name.replace("_", "-")
        if kind is dict:  # logit_bias: repeat --logit-bias ID:BIAS
            parser.add_argument(flag, action="append", type=_logit_bias, metavar=metavar, help=help)
            continue
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)


def _logit_bias(text: str) -> tuple[int, float]:
    token, sep, bias = text.partition(":")
    try:
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected TOKEN_ID:BIAS such as 50256:-100, got {text!r}"
        ) from None


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `shoshin` parser, every subcommand with its options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="where runs live (default: $SHOSHIN_RUNS_DIR or ./runs)")

    parser = argparse.ArgumentParser(prog="shoshin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_training_commands(sub, common)
    _add_run_commands(sub, common)
    _add_model_commands(sub, common)
    _add_serve_command(sub, common)
    _add_eval_command(sub, common)
    _add_experiment_commands(sub, common)
    return parser


def _add_training_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """train, finetune, config: make a run and read the config keys"""
    p = sub.add_parser("train", parents=[common], help="train an LSTM or GPT from scratch")
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue RUN from its latest checkpoint "
        "(with train.max_steps=N / train.max_minutes=M: a new budget)",
    )
    p.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N processes on this machine (starts torchrun; data-parallel DDP)",
    )
    p.add_argument(
        "--seeds",
        metavar="N|S1,S2,...",
        help="a group of runs that differ only in train.seed: N seeds from train.seed on, or "
        "these seeds; compare groups with shoshin compare GROUP_A GROUP_B",
    )
    p.add_argument(
        "--parallel",
        nargs="?",
        type=int,
        const=-1,
        metavar="K",
        help="with --seeds: train the runs as processes at once (K at a time; default all), "
        "the CPU threads split between them",
    )
    p.add_argument(LINK_OPTION, help=argparse.SUPPRESS)
    p.set_defaults(func="cmd_train")

    p = sub.add_parser(
        "finetune",
        parents=[common],
        help="fine-tune a Hugging Face GPT-2, GPT-1, Llama or Qwen3 checkpoint",
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SRC",
        help="a checkpoint folder (config.json + weights + tokenizer) or a hub id such as gpt2 "
        "or HuggingFaceTB/SmolLM2-135M",
    )
    add_config_arguments(p, default="finetune")
    p.set_defaults(func="cmd_finetune")

    p = sub.add_parser(
        "config", help="every config key with its type, default and description; a preset resolved"
    )
    add_config_arguments(p)
    p.set_defaults(func="cmd_config")


def _add_run_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """export, runs, show, compare, reproduce: what is in a run"""
    p = sub.add_parser("export", parents=[common], help="write a run as a transformers checkpoint")
    p.add_argument("run", metavar="RUN", help="run id, unique prefix, latest, or run directory")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to create")
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    p.add_argument(
        "--adapter",
        action="store_true",
        help="LoRA runs: write the adapters for peft (DIR/adapter) and the base model (DIR/base) "
        "instead of one merged model",
    )
    p.set_defaults(func="cmd_export")

    p = sub.add_parser("runs", parents=[common], help="list runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func="cmd_runs")

    p = sub.add_parser("show", parents=[common], help="show one run or seed group")
    p.add_argument(
        "run", metavar="RUN", help="run or group id, unique prefix, latest, or run directory"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func="cmd_show")

    p = sub.add_parser(
        "compare",
        parents=[common],
        help="compare runs or seed groups: which is better (with significance), then config, "
        "code, data, environment",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="two or more runs or seed groups (id, prefix or path; RUN1,RUN2,... is a group)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="learning curves (mean and min-max band per group) and final loss per run "
        "(needs matplotlib: pip install 'shoshin[plot]')",
    )
    p.add_argument(
        "--verbose", action="store_true", help="list every environment and package difference"
    )
    p.set_defaults(func="cmd_compare")

    p = sub.add_parser(
        "reproduce",
        parents=[common],
        help="re-run a recorded run and verify its metrics",
        usage="shoshin reproduce RUN [options]\n       shoshin reproduce --probe [CONFIG] [key=value ...]",
    )
    add_config_arguments(p)
    p.add_argument("--steps", type=int, help="steps to re-run (default: all the run recorded)")
    p.add_argument("--force", action="store_true", help="re-run even if code or data changed")
    p.add_argument(
        "--tolerance", type=float, default=1e-6, help="largest |Δ loss| still counted as equal"
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="two short runs of CONFIG (default tiny) with one seed: is this machine deterministic?",
    )
    p.set_defaults(func="cmd_reproduce")


def _add_model_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """sample, chat: use a trained model"""
    generation = argparse.ArgumentParser(add_help=False)
    _add_sampling_options(generation)
    generation.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    _add_precision_options(generation)

    p = sub.add_parser("sample", parents=[common, generation], help="generate text from a run")
    p.add_argument(
        "run", metavar="RUN", help="run id, prefix, latest, run directory or HF checkpoint"
    )
    p.add_argument(
        "--prompt",
        default="",
        type=clean_text,
        help="text to continue (a user message for chat models)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        type=clean_text,
        metavar="TEXT",
        help="stop before TEXT (repeatable)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="past a full window, slide it by one token and re-read it at every step, as an "
        "uncached model would (slow; the default keeps the recent half and goes on)",
    )
    p.set_defaults(func="cmd_sample", **SURFACE_DEFAULTS["sample"])

    p = sub.add_parser("chat", parents=[common, generation], help="multi-turn chat in the terminal")
    p.add_argument(
        "run", metavar="RUN", help="run id, prefix, latest, run directory or HF checkpoint"
    )
    p.add_argument(
        "--system",
        default=None,
        type=clean_text,
        help="a system prompt, kept however long the chat gets",
    )
    p.set_defaults(func="cmd_chat", **SURFACE_DEFAULTS["chat"])


def _add_serve_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """serve: the OpenAI-compatible HTTP API and web chat page."""
    p = sub.add_parser(
        "serve", parents=[common], help="OpenAI-compatible HTTP API and web chat page"
    )
    p.add_argument(
        "run", metavar="RUN", help="run id, unique prefix, latest, run directory or checkpoint"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` (default: $SHOSHIN_API_KEY)"
    )
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together")
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=64,
        help="requests in progress or queued; more get 429",
    )
    p.add_argument("--max-tokens", type=int, default=512, help="cap on a request's max_tokens")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="larger bodies get 413")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN (e.g. https://app.example) call the API; repeatable; "
        "`*` for any (default: none)",
    )
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's; 1 suits tiny models)"
    )
    _add_precision_options(p)
    p.set_defaults(func="cmd_serve")


def _add_eval_command(sub: Any, common: argparse.ArgumentParser) -> None:
    """eval: held-out scores, harness tasks, a pairwise comparison"""
    p = sub.add_parser(
        "eval",
        parents=[common],
        help="score a model: held-out chat scores, lm-evaluation-harness tasks, pairwise",
        description="Held-out scores of the validation conversations (no extra needed), "
        "lm-evaluation-harness tasks (--tasks; pip install 'shoshin[eval]') and a judge-free "
        "comparison with another run (--against); recorded in the run's eval/ folder.",
    )
    p.add_argument(
        "run", metavar="RUN", help="run id, prefix, latest, run directory or HF checkpoint"
    )
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    p.add_argument(
        "--tasks",
        action="append",
        default=[],
        help="lm-evaluation-harness tasks (repeat or comma-separate: --tasks hellaswag,arc_easy)",
    )
    p.add_argument("--include-path", metavar="DIR", help="a folder of your own task YAML files")
    p.add_argument(
        "--limit", type=float, help="at most N samples per task (a fraction below 1: that share)"
    )
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (task default)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="generation tasks through /v1/chat/completions with the chat template",
    )
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="held-out data to score instead of the run's validation split (e.g. a .jsonl chat)",
    )
    p.add_argument(
        "--max-documents",
        type=int,
        default=200,
        help="held-out conversations (or texts) to score, the first N (default 200)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=32_768,
        help="of the run's validation split, at most this many tokens (0: no limit)",
    )
    p.add_argument(
        "--against", metavar="RUN_B", help="compare with another run on the same held-out chats"
    )
    p.add_argument(
        "--prompts", type=int, default=20, help="with --against: prompts both models answer"
    )
    p.add_argument(
        "--out", metavar="FILE.md", help="with --against: where to write the replies side by side"
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    _add_sampling_options(p)
    p.set_defaults(func="cmd_eval", **SURFACE_DEFAULTS["eval"])


def _add_experiment_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """estimate, lr-find, bench: plan and compare training"""
    p = sub.add_parser(
        "estimate", help="parameters, FLOPs, memory and predicted time before training"
    )
    add_config_arguments(p)
    p.add_argument(
        "--calibration-steps",
        type=int,
        default=5,
        help="training steps timed on this machine to predict the wall time (0 = skip)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func="cmd_estimate")

    p = sub.add_parser(
        "lr-find", parents=[common], help="learning-rate range test with a plot and a suggestion"
    )
    add_config_arguments(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=300, help="steps from --start-lr to --end-lr")
    p.set_defaults(func="cmd_lr_find")

    p = sub.add_parser("bench", help="benchmarks: `bench matrix` compares architectures x datasets")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    p = bench.add_parser(
        "matrix",
        parents=[common],
        help="train every architecture on every dataset at a fixed budget; leaderboard + heatmap",
    )
    p.add_argument(
        "--arch",
        action="append",
        required=True,
        help="a preset or YAML config (repeat or comma-separate: --arch tiny,lstm-char)",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="a corpus: a .txt/.jsonl path or chitchat (repeat or comma-separate)",
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="training steps per cell")
    budget.add_argument("--minutes", type=float, help="training minutes per cell")
    p.add_argument("--out", default="matrix", help="folder for the leaderboard and heatmap")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="runs per cell with seeds train.seed, +1, ...: cells show mean ± sd and the "
        "leaderboard marks cells not significantly different from the leader as tied",
    )
    add_config_arguments(p, config=False)
    p.set_defaults(func="cmd_bench_matrix")
