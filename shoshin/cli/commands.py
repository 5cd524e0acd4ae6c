"""The subcommands: each a small function taking the parsed arguments; the work lives in the
library and the text it prints comes from shoshin.runs.report."""

from __future__ import annotations

import argparse
import json
import sys

from shoshin.cli.parser import LINK_OPTION
from shoshin.config import Config, key_reference, load_config, preset_names, to_yaml
from shoshin.errors import ShoshinError
from shoshin.generation.params import SamplingParams, cli_options
from shoshin.runs.store import all_runs, resolve_run, runs_root


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as the user typed it (recorded in the run's manifest)."""
    return ["shoshin", *args.argv]


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
    from shoshin.training.runner import resume, train

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
    from shoshin.storage.manifest import GroupLink

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
    from shoshin.runs.store import latest_run

    root = runs_root(args.runs_dir)
    summaries = [summarize(r) for r in all_runs(root)]
    if args.json:
        print(json.dumps(runs_json(summaries), indent=2))
    elif not summaries:
        print(f"no runs in {root} yet; try: shoshin train tiny")
    else:
        try:
            latest: str | None = latest_run(root).id
        except ShoshinError:  # no training run with a checkpoint yet: nothing is `latest`
            latest = None
        print(format_runs(summaries, latest))
        from shoshin.runs.compare_view import format_groups
        from shoshin.runs.groups import groups_in

        groups = groups_in(root)
        if groups:
            print("\n" + format_groups(groups))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from shoshin.runs.groups import Group, resolve_subject
    from shoshin.runs.report import format_show, show_json
    from shoshin.storage.evaluations import read_records

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
    from shoshin.generation.continuation import sample_text

    model, tok = _load_for_inference(args)
    if not is_chat_tokenizer(tok):
        print(args.prompt, end="", flush=True)
    for piece in sample_text(
        model, tok, args.prompt, _sampling_params(args), args.no_cache, args.stop
    ):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from shoshin.generation import Engine
    from shoshin.generation.conversation import ChatSession, run_terminal_chat
    from shoshin.loading import resolve_source
    from shoshin.runs.store import Run

    source = resolve_source(args.run, args.runs_dir)  # `latest` or a prefix: say which run
    if isinstance(source, Run):
        args.run = str(source.path)  # resolved once: `latest` says what it skipped once
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
    from shoshin.runs.groups import eval_pairs

    if args.limit is not None and args.limit <= 0:
        raise ShoshinError("--limit must be positive (a count, or a fraction below 1)")
    if args.max_documents < 1:
        raise ShoshinError("--max-documents must be at least 1")
    tasks = [t.strip() for value in args.tasks for t in value.split(",") if t.strip()]
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    pairs = eval_pairs(args.run, args.against, runs_root(args.runs_dir))
    records = []
    for ref, against_ref in pairs:
        if len(pairs) > 1:
            log(f"== {ref}" + (f" against {against_ref}" if against_ref else ""))
        subject = load_subject(ref, args.checkpoint, args.runs_dir)
        against = load_subject(against_ref, "latest", args.runs_dir) if against_ref else None
        records += _evaluate_one(args, subject, against, tasks, log)
    if len(pairs) > 1:
        from shoshin.runs.compare_view import format_eval_group

        log(format_eval_group(records))
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in records], indent=2))
    return 0


def _evaluate_one(args: argparse.Namespace, subject, against, tasks: list[str], log) -> list:
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
