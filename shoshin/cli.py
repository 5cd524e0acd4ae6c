"""The `shoshin` command line: one subcommand per step of the user's story.

Each subcommand is a small function taking the parsed arguments; the work lives in the library.
A user's mistake ends with a one-line `error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from shoshin.errors import ShoshinError
from shoshin.runs.store import Run, all_runs, effective_status, resolve_run, runs_root


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _fmt_params(n: int | None) -> str:
    if not n:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print left-aligned columns, widths fitted to the content."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    for line in (headers, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def run_summary(run: Run) -> dict:
    """The facts `shoshin runs` lists for one run."""
    m = run.manifest
    return {
        "id": run.id,
        "name": m.get("name"),
        "arch": m.get("arch"),
        "params": m.get("params"),
        "steps": m.get("steps", 0),
        "best_val_loss": m.get("best_val_loss"),
        "status": effective_status(m),
        "duration_seconds": m.get("elapsed_seconds"),
        "start_time": m.get("start_time"),
        "path": str(run.path),
    }


# -- commands --------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from shoshin.config import load_config
    from shoshin.training.trainer import resume, train

    root = runs_root(args.runs_dir)
    if args.resume:
        if args.config:
            raise ShoshinError(
                "--resume continues a run with its recorded config; drop the CONFIG argument"
            )
        resume(resolve_run(args.resume, root))
    else:
        config_arg, overrides = _split_config_args(args.config, args.overrides)
        config = load_config(config_arg, overrides)
        train(config, root, command=["shoshin", *sys.argv[1:]])
    return 0


def _split_config_args(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """`shoshin train model.n_layer=2` has no CONFIG: a first argument with '=' is an override."""
    if config and "=" in config:
        return None, [config, *overrides]
    return config, overrides


def cmd_runs(args: argparse.Namespace) -> int:
    summaries = [run_summary(r) for r in all_runs(runs_root(args.runs_dir))]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    if not summaries:
        print(f"no runs in {runs_root(args.runs_dir)} yet; try: shoshin train tiny")
        return 0
    rows = [
        [
            s["id"],
            s["name"] or "-",
            s["arch"] or "-",
            _fmt_params(s["params"]),
            str(s["steps"]),
            f"{s['best_val_loss']:.4f}" if s["best_val_loss"] is not None else "-",
            s["status"],
            _fmt_duration(s["duration_seconds"]),
        ]
        for s in summaries
    ]
    print_table(["id", "name", "arch", "params", "steps", "best val", "status", "duration"], rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, runs_root(args.runs_dir))
    manifest = run.manifest
    manifest["status"] = effective_status(manifest)
    metrics = run.metrics()
    if args.json:
        print(
            json.dumps(
                {"manifest": manifest, "config": run.config.to_dict(), "metrics": metrics}, indent=2
            )
        )
        return 0
    summary = run_summary(run)
    print(f"run       {run.id}")
    print(f"path      {run.path}")
    print(
        f"status    {summary['status']}"
        + (f" ({manifest['error']})" if manifest.get("error") else "")
    )
    print(f"command   {' '.join(manifest.get('command', []))}")
    print(f"started   {manifest.get('start_time')}   ended {manifest.get('end_time') or '-'}")
    print(
        f"model     {manifest.get('arch', '-')}, {_fmt_params(manifest.get('params'))} parameters"
    )
    data = manifest.get("data", {})
    if data:
        print(f"data      {data.get('source')} ({data.get('kind')}), tokens {data.get('tokens')}")
    print(
        f"steps     {manifest.get('steps', 0)} in {_fmt_duration(manifest.get('elapsed_seconds'))}"
    )
    best = manifest.get("best_val_loss")
    print(f"val loss  best {best:.4f}" if best is not None else "val loss  -")
    git = manifest.get("git")
    if git:
        print(f"git       {git.get('commit', '-')}" + (" (dirty)" if git.get("dirty") else ""))
    print("config:")
    for section, values in run.config.to_dict().items():
        if isinstance(values, dict):
            print(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        else:
            print(f"  {section}: {values}")
    evals = [r for r in metrics if "val_loss" in r]
    if evals:
        print("evaluations:")
        print_table(
            ["  step", "val loss", "train loss"],
            [
                [
                    f"  {r['step']}",
                    f"{r['val_loss']:.4f}",
                    f"{r['train_loss']:.4f}" if "train_loss" in r else "-",
                ]
                for r in evals[-10:]
            ],
        )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from shoshin.data.chat import end_token_ids, is_chat_tokenizer, render_chat
    from shoshin.generation import generate
    from shoshin.loading import load_run

    run = resolve_run(args.run, runs_root(args.runs_dir))
    model, tok = load_run(run, args.checkpoint)
    chat = is_chat_tokenizer(tok)
    if chat:
        prompt_ids, _ = render_chat(
            tok, [{"role": "user", "content": args.prompt}], add_generation_prompt=True
        )
    else:
        prompt_ids = tok.encode(args.prompt) or [tok.special_tokens["<|endoftext|>"]]
    new = generate(
        model,
        prompt_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        use_cache=not args.no_cache,
        stop_ids=end_token_ids(tok) if chat else (),
    )
    stops = set(end_token_ids(tok))
    if chat and new and new[-1] in stops:
        new = new[:-1]
    print(tok.decode(new) if chat else args.prompt + tok.decode(new))
    return 0


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="where runs live (default: $SHOSHIN_RUNS_DIR or ./runs)")

    parser = argparse.ArgumentParser(prog="shoshin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", parents=[common], help="train an LSTM or GPT from scratch")
    p.add_argument(
        "config",
        nargs="?",
        help="a preset name (tiny, demo, shakespeare-char, lstm-char) or a YAML file",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. train.max_steps=500",
    )
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its latest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", parents=[common], help="list runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", parents=[common], help="show one run")
    p.add_argument("run", metavar="RUN", help="run id, unique prefix, latest, or run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("sample", parents=[common], help="generate text from a run")
    p.add_argument("run", metavar="RUN", help="run id, unique prefix, latest, or run directory")
    p.add_argument("--prompt", default="", help="text to continue (a user message for chat models)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    p.add_argument("--no-cache", action="store_true", help="use the naive reference path")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ShoshinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
