"""The `shoshin` command line: one subcommand per step of the user's story.

Each subcommand is a small function taking the parsed arguments; the work lives in the library and
the text it prints comes from shoshin.runs.report. A user's mistake ends with a one-line
`error: ...` and exit status 2, never a traceback; so does a full, read-only or missing disk
(status 1), and SIGTERM stops a command as Ctrl-C does.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from shoshin.config import Config, key_reference, load_config, preset_names, to_yaml
from shoshin.data.text import clean_text
from shoshin.errors import ShoshinError, Terminated, disk_error_line
from shoshin.generation.params import SURFACE_DEFAULTS, SamplingParams, cli_options
from shoshin.runs.store import all_runs, resolve_run, runs_root

LINK_OPTION = "--group-link"  # how `train --seeds --parallel` tells a member its group


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as the user typed it (recorded in the run's manifest)."""
    return ["shoshin", *args.argv]


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


def config_from_args(
    args: argparse.Namespace, default: str | None = None
) -> tuple[Config, list[str]]:
    """The config that CONFIG and the overrides describe, and the overrides themselves."""
    name, overrides = args.config, list(args.overrides)
    if name and "=" in name:  # `shoshin train model.n_layer=2`: no CONFIG, only overrides
        name, overrides = None, [name, *overrides]
    return load_config(name or default, overrides), overrides


# -- commands --------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    if args.seeds:
        return _train_group(args)
    if args.nproc:
        from shoshin.training.distributed import launch

        return launch(args.nproc, _without_option(args.argv, "--nproc"))
    root = runs_root(args.runs_dir)
    # The config and the run are checked before PyTorch is imported: a mistake fails at once.
    if args.resume:
        changes = _resume_overrides(args)
        run = resolve_run(args.resume, root)
    else:
        config, _ = config_from_args(args)
    from shoshin.training.distributed import shutdown
    from shoshin.training.trainer import resume, train

    try:
        if args.resume:
            resume(run, changes=changes)
        else:
            command = ["shoshin", *_without_option(args.argv, LINK_OPTION)]
            train(config, root, command=command, manifest=_group_link(args))
    finally:
        shutdown()  # leave the torchrun process group, if there is one
    return 0


def _train_group(args: argparse.Namespace) -> int:
    """`train CONFIG --seeds N|S1,S2,... [--parallel [K]]`: one group of runs (experiments.seeds)."""
    from shoshin.experiments.seeds import parse_seeds, train_group

    if args.resume or args.nproc:
        raise ShoshinError(
            "--seeds trains a new group of runs; it cannot go with --resume or --nproc"
        )
    config, _ = config_from_args(args)
    seeds = parse_seeds(args.seeds, config.train.seed)
    parallel = len(seeds) if args.parallel == -1 else (args.parallel or 0)
    if parallel < 0:
        raise ShoshinError("--parallel K must be at least 1")
    member_args = _without_option(args.argv, "--seeds")[1:]  # without the `train` itself
    if "--parallel" in member_args:  # a bare flag, or with its count
        at = member_args.index("--parallel")
        count = at + 1 < len(member_args) and member_args[at + 1].isdigit()
        del member_args[at : at + 1 + count]
    group = train_group(config, seeds, runs_root(args.runs_dir), member_args, parallel)
    left_out = group.left_out()
    print(f"group {group.id}: {len(group.completed())} of {len(seeds)} runs completed")
    for line in left_out:
        print(f"  {line}")
    return 1 if left_out else 0


def _group_link(args: argparse.Namespace) -> dict | None:
    """The group a parallel member belongs to (set by `--seeds ... --parallel`, not by users)."""
    if not args.group_link:
        return None
    from shoshin.runs.record import GroupLink

    return {"group": GroupLink(**json.loads(args.group_link))}


RESUME_KEYS = ("train.max_steps", "train.max_minutes")  # the budget: what a resume may change


def _resume_overrides(args: argparse.Namespace) -> list[str]:
    """The `key=value` items given with --resume: only the budget keys, to extend or shorten it."""
    items = [args.config, *args.overrides] if args.config else list(args.overrides)
    for item in items:
        if item.partition("=")[0].strip() not in RESUME_KEYS or "=" not in item:
            raise ShoshinError(
                "--resume continues a run with its recorded config; drop the CONFIG argument "
                f"(only {' and '.join(RESUME_KEYS)} may change, to extend or shorten the run)"
            )
    return items


def _without_option(argv: list[str], option: str) -> list[str]:
    """argv without `option VALUE` / `option=VALUE` (to pass the rest on to torchrun's workers)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def cmd_finetune(args: argparse.Namespace) -> int:
    from shoshin.training.finetune import finetune

    config, overrides = config_from_args(args, default="finetune")
    finetune(
        args.source,
        config,
        runs_root(args.runs_dir),
        command=command_line(args),
        overrides=overrides,
    )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from shoshin.runs.report import table

    if args.config or args.overrides:
        config, _ = config_from_args(args)
        print(to_yaml(config), end="")
        return 0
    rows = [[k.key, k.type, _default(k.default), k.help] for k in key_reference()]
    print("\n".join(table(["key", "type", "default", "description"], rows)))
    print(f"\npresets: {', '.join(preset_names())}; shoshin config PRESET shows one resolved")
    return 0


def _default(value: object) -> str:
    """A default as YAML writes it: true, 0.001, "" for the empty string."""
    if value == "":
        return '""'
    return json.dumps(value) if isinstance(value, bool) else str(value)


def cmd_runs(args: argparse.Namespace) -> int:
    from shoshin.runs.report import format_runs, runs_json, summarize
    from shoshin.runs.store import TRAINING_KINDS, latest_run

    root = runs_root(args.runs_dir)
    summaries = [summarize(r) for r in all_runs(root)]
    if args.json:
        print(json.dumps(runs_json(summaries), indent=2))
    elif not summaries:
        print(f"no runs in {root} yet; try: shoshin train tiny")
    else:
        trained = any(s.kind in TRAINING_KINDS for s in summaries)
        print(format_runs(summaries, latest_run(root).id if trained else None))
        from shoshin.runs.compare_view import format_groups
        from shoshin.runs.groups import groups_in

        groups = groups_in(root)
        if groups:
            print("\n" + format_groups(groups))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from shoshin.evaluation.record import read_records
    from shoshin.runs.groups import Group, resolve_subject
    from shoshin.runs.report import format_show, show_json

    run = resolve_subject(args.run, runs_root(args.runs_dir))
    if isinstance(run, Group):
        from shoshin.runs.compare_view import format_group, group_json

        print(json.dumps(group_json(run), indent=2) if args.json else format_group(run))
        return 0
    manifest, config, metrics = run.manifest, run.config, run.metrics()
    records = read_records(run.path)
    if args.json:
        print(json.dumps(show_json(run, manifest, config, metrics, records), indent=2))
    else:
        print(format_show(run, manifest, config, metrics, records))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from shoshin.runs.compare import compare_runs
    from shoshin.runs.compare_view import format_compare, plot_compare
    from shoshin.runs.groups import resolve_subject

    root = runs_root(args.runs_dir)
    subjects = [resolve_subject(ref, root) for ref in args.runs]
    report = compare_runs(subjects)
    if args.plot:
        plot_compare(subjects, report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_compare(report, verbose=args.verbose))
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from shoshin.experiments.reproduce import probe, reproduce

    if args.probe:
        config, _ = config_from_args(args, default="tiny")
        verdict = probe(config, steps=args.steps or 20)
        if verdict.ok:
            print(
                f"DETERMINISTIC: two runs of {verdict.steps} steps with the same seed are identical"
            )
        else:
            print(f"NOT DETERMINISTIC: {verdict.line()}")
        return 0 if verdict.ok else 1
    if not args.config or args.overrides:
        raise ShoshinError(
            "reproduce takes one RUN (or --probe [CONFIG] [key=value ...]); see shoshin runs"
        )
    from shoshin.runs.groups import Group, resolve_subject

    root = runs_root(args.runs_dir)
    subject = resolve_subject(args.config, root)
    members = subject.runs if isinstance(subject, Group) else [subject]
    ok = True
    for run in members:  # a group: each member re-run and verified in turn
        if len(members) > 1:
            print(f"member {run.id} (seed {run.manifest.seed}):")
        new, verdict = reproduce(
            run,
            root,
            steps=args.steps,
            force=args.force,
            tolerance=args.tolerance,
            command=command_line(args),
        )
        print(f"re-run: {new.id}")
        print(verdict.line())
        ok = ok and verdict.ok
    return 0 if ok else 1


def cmd_sample(args: argparse.Namespace) -> int:
    from shoshin.data.chat import is_chat_tokenizer
    from shoshin.generation.sample import sample_text

    model, tok = _load_for_inference(args)
    if not is_chat_tokenizer(tok):
        print(args.prompt, end="", flush=True)
    for piece in sample_text(
        model, tok, args.prompt, _sampling_params(args), not args.no_cache, args.stop
    ):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from shoshin.generation import Engine
    from shoshin.generation.chat import ChatSession, run_terminal_chat
    from shoshin.loading import resolve_source
    from shoshin.runs.store import Run

    source = resolve_source(args.run, args.runs_dir)  # `latest` or a prefix: say which run
    model, tok = _load_for_inference(args)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # an invalid byte typed or piped in becomes U+FFFD
    session = ChatSession(Engine(model), tok, system=args.system, params=_sampling_params(args))
    window = session.engine.window
    name = source.id if isinstance(source, Run) else source
    print(f"chatting with {name} ({model.config.arch}, context {window or 'unlimited'} tokens)")
    run_terminal_chat(session)
    return 0


def _load_for_inference(args: argparse.Namespace):
    """Model and tokenizer of a run or HF checkpoint, at the precision the user asked for."""
    from shoshin.generation.precision import prepare_for_inference
    from shoshin.loading import load

    model, tok = load(args.run, args.checkpoint, args.runs_dir)  # a run or an HF checkpoint
    return prepare_for_inference(model, args.dtype, args.quantize, args.device), tok


def _add_precision_options(parser: argparse.ArgumentParser) -> None:
    """--dtype, --quantize (with what is fastest on this CPU: shoshin.generation.precision) and
    --device."""
    from shoshin.generation.precision import fastest_on_this_cpu

    fastest = fastest_on_this_cpu().replace("%", "%%")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help=f"weights and activations (fp32 is exact: it equals --no-cache); {fastest}",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8 weights (per output channel), within 0.02 nats of fp32 in our benchmark",
    )
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


def _sampling_params(args: argparse.Namespace) -> SamplingParams:
    values = {name: getattr(args, name) for name, *_ in cli_options()}
    values["logit_bias"] = dict(args.logit_bias or [])
    return SamplingParams(**values).validate()


def cmd_export(args: argparse.Namespace) -> int:
    from shoshin.interop.export import export

    out = export(args.run, args.out, args.checkpoint, args.runs_dir, adapter=args.adapter)
    if args.adapter:
        print(
            f"wrote {out}/base and {out}/adapter (load them with peft.PeftModel.from_pretrained("
            f"AutoModelForCausalLM.from_pretrained('{out}/base'), '{out}/adapter'))"
        )
    else:
        print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from shoshin.serving import ServeConfig, load_app, serve

    for name in ("max_batch", "max_concurrent", "max_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ShoshinError(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise ShoshinError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    config = ServeConfig(
        max_batch=args.max_batch,
        max_concurrent=args.max_concurrent,
        max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get("SHOSHIN_API_KEY") or None,
        cors_origins=tuple(args.cors_origin),
    )
    app = load_app(
        args.run, config, args.checkpoint, args.runs_dir, args.dtype, args.quantize, args.device
    )
    serve(app, args.host, args.port)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    config, _ = config_from_args(args)
    from shoshin.training.estimate import estimate, format_estimate

    # With --json, stdout carries only the JSON; progress notes go to stderr.
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    est = estimate(config, calibration_steps=args.calibration_steps, log=log)
    print(json.dumps(est.to_dict(), indent=2) if args.json else format_estimate(est))
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    config, _ = config_from_args(args)
    from shoshin.experiments.lr_find import lr_find

    result = lr_find(
        config,
        runs_root(args.runs_dir),
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        steps=args.steps,
        command=command_line(args),
    )
    print(f"suggested learning rate: {result.suggested_lr:.2e} ({result.rule})")
    print(f"plot: {result.plot}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from shoshin.evaluation.evaluate import load_subject

    if args.limit is not None and args.limit <= 0:
        raise ShoshinError("--limit must be positive (a count, or a fraction below 1)")
    if args.max_documents < 1:
        raise ShoshinError("--max-documents must be at least 1")
    tasks = [t.strip() for value in args.tasks for t in value.split(",") if t.strip()]
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    subjects, againsts = _eval_pairs(args)
    records = []
    for ref, against_ref in zip(subjects, againsts, strict=True):
        if len(subjects) > 1:
            log(f"== {ref}" + (f" against {against_ref}" if against_ref else ""))
        subject = load_subject(ref, args.checkpoint, args.runs_dir)
        against = load_subject(against_ref, "latest", args.runs_dir) if against_ref else None
        records += _evaluate_one(args, subject, against, tasks, log)
    if len(subjects) > 1:
        from shoshin.runs.compare_view import format_eval_group

        log(format_eval_group(records))
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in records], indent=2))
    return 0


def _eval_pairs(args: argparse.Namespace) -> tuple[list[str], list[str | None]]:
    """What `eval` scores: a run (or checkpoint), or each member of a group; with --against,
    what each is compared with (a group against a group: members paired in seed order)."""
    from shoshin.runs.groups import Group, resolve_subject

    def members(ref: str) -> list[str]:
        if ref == "latest" or ("," not in ref and not ref.startswith("g-")):
            return [ref]  # a run or a Hugging Face checkpoint: resolved as before
        found = resolve_subject(ref, runs_root(args.runs_dir))
        if isinstance(found, Group):
            return [str(run.path) for run, _ in found.completed()] or [str(found.runs[0].path)]
        return [ref]

    subjects = members(args.run)
    if not args.against:
        return subjects, [None] * len(subjects)
    againsts = members(args.against)
    if len(againsts) == 1:
        againsts = againsts * len(subjects)
    if len(againsts) != len(subjects):
        raise ShoshinError(
            f"{args.run} has {len(subjects)} completed runs and {args.against} {len(againsts)}; "
            "--against pairs them one to one: give groups of the same size, or one run"
        )
    return subjects, againsts


def _evaluate_one(args, subject, against, tasks, log) -> list:
    from shoshin.evaluation.evaluate import evaluate

    return evaluate(
        subject,
        command_line(args),
        tasks=tasks,
        include_path=args.include_path,
        limit=int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit,
        num_fewshot=args.num_fewshot,
        chat=args.chat,
        data=args.data,
        max_documents=args.max_documents,
        max_tokens=args.max_tokens or None,
        against=against,
        params=_sampling_params(args),
        prompts=args.prompts,
        out=args.out,
        log=log,
    )


def cmd_bench_matrix(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shoshin.experiments.matrix import MatrixSpec, run_matrix

    def split(values: list[str]) -> list[str]:
        return [v.strip() for value in values for v in value.split(",") if v.strip()]

    spec = MatrixSpec(
        archs=split(args.arch),
        datasets=split(args.data),
        steps=args.steps or 0,
        minutes=args.minutes or 0.0,
        overrides=list(args.overrides),
        seeds=args.seeds,
    )
    run_matrix(spec, Path(args.out), runs_root(args.runs_dir))
    return 0


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM stops a command the way Ctrl-C does (a torchrun worker replaces this handler with
    its own, see shoshin.training.distributed; `serve` lets uvicorn shut down first)."""
    raise Terminated


# -- parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="where runs live (default: $SHOSHIN_RUNS_DIR or ./runs)")

    parser = argparse.ArgumentParser(prog="shoshin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "finetune", parents=[common], help="fine-tune a Hugging Face GPT-1/GPT-2 checkpoint"
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SRC",
        help="a checkpoint folder (config.json + weights + tokenizer) or a hub id such as gpt2",
    )
    add_config_arguments(p, default="finetune")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "config", help="every config key with its type, default and description; a preset resolved"
    )
    add_config_arguments(p)
    p.set_defaults(func=cmd_config)

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
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("runs", parents=[common], help="list runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", parents=[common], help="show one run or seed group")
    p.add_argument(
        "run", metavar="RUN", help="run or group id, unique prefix, latest, or run directory"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show)

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
    p.set_defaults(func=cmd_compare)

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
    p.set_defaults(func=cmd_reproduce)

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
    p.add_argument("--no-cache", action="store_true", help="use the naive reference path")
    p.set_defaults(func=cmd_sample, **SURFACE_DEFAULTS["sample"])

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
    p.set_defaults(func=cmd_chat, **SURFACE_DEFAULTS["chat"])

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
    p.set_defaults(func=cmd_serve)

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
    p.set_defaults(func=cmd_eval, **SURFACE_DEFAULTS["eval"])

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
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "lr-find", parents=[common], help="learning-rate range test with a plot and a suggestion"
    )
    add_config_arguments(p)
    p.add_argument("--start-lr", type=float, default=1e-7)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=300, help="steps from --start-lr to --end-lr")
    p.set_defaults(func=cmd_lr_find)

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
    p.set_defaults(func=cmd_bench_matrix)
    return parser


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Run `shoshin ARGV` (default: this process's arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills CONFIG and the overrides at the first positional, so overrides after an
    # option (`train tiny --runs-dir X key=value`) come back unparsed: they are overrides too.
    if extra and hasattr(args, "overrides") and all(_is_override(a) for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except ShoshinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        line = disk_error_line(exc, str(runs_root(getattr(args, "runs_dir", None))))
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
