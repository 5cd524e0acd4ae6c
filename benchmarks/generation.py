"""Generation benchmark: shoshin's engine against transformers generate(), CTranslate2 and its own
naive reference, with the targets of issues 11 and 20 printed as PASS or MISS.

A GPT-2-124M-shaped model with random weights; the identical weights go into
transformers.GPT2LMHeadModel through shoshin's interop code, and CTranslate2 converts that
transformers checkpoint (its float32 model, quantized at load time for `int8_float32`). Batch 1,
one process, the same thread count for every engine; contenders run round robin (so that a change
in a shared machine's load hits all alike) and each keeps its best round.

1. correctness: the first 64 greedy tokens of cached, naive, transformers and CTranslate2 float32;
2. decode tokens/s (a short prompt, then N greedy tokens): transformers fp32, CTranslate2 float32 and
   int8_float32, shoshin fp32 / bf16 / int8 / int4 (issue 20 targets 1-3);
3. time to first token of a 512-token prompt: shoshin vs transformers (issue 20 target 4);
4. ms/token by position, cached vs naive (target 6);
5. memory-bandwidth utilisation of each shoshin precision;
6. quality: val-loss change of bf16, int8 and int4 on a small model trained on the spot, and
   their greedy agreement with fp32 (issue 20 target 2);
7. multi-turn chat: time to first token of turn 5 with the reused cache vs re-processing it all;
8. the static decode step through torch.compile (first-call latency apart) and, on CUDA, CUDA
   graphs, against eager (not in the default sections: compiling takes minutes on a small CPU);
9. where a decode step's time goes: matmuls, other ops, and outside any op (torch.profiler).

    python benchmarks/generation.py                 # a few minutes on an idle 2-core CPU
    python benchmarks/generation.py --quick         # small counts, to check the script runs
    python benchmarks/generation.py --device cuda   # the same on a GPU (CTranslate2: int8_float16)

Needs the `bench` extra (transformers, ctranslate2).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from shoshin.config import ModelConfig, load_config
from shoshin.device import cpu_features, cpu_has_bf16_matmul
from shoshin.generation import Engine, SamplingParams
from shoshin.generation.precision import (
    measured_speeds,
    prepare_for_inference,
)
from shoshin.generation.prefix import common_prefix
from shoshin.generation.quantize import Int4Linear, Int8Linear, PackedLinear, TransposedLinear
from shoshin.models import GPT

# The naive reference generator lives with the tests, which hold the engine to it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import naive_generate  # noqa: E402

VOCAB = 50257
RESULTS: list[tuple[str, str, bool | None]] = []  # (target, figure, met) for the summary


def target(name: str, figure: str, met: bool | None) -> None:
    """Record and print one target's figure with PASS / MISS (None: not applicable here)."""
    RESULTS.append((name, figure, met))
    verdict = "n/a" if met is None else ("PASS" if met else "MISS")
    print(f"  -> {name}: {figure}  [{verdict}]")


def gpt2_small(seed: int) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        arch="gpt", n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=VOCAB
    )
    model = GPT(config).eval()
    with torch.no_grad():  # wider random matrices: greedy output that wanders, not one token
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "wpe.weight":
                p.normal_(0.0, 0.05)
    return model


def write_transformers_checkpoint(model: GPT, folder: Path) -> Path:
    """The same weights as a transformers GPT-2 checkpoint (shoshin's interop converter), with a
    word-level tokenizer whose token i is "t{i}" (CTranslate2's converter reads the vocabulary)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from shoshin.interop.hf import shoshin_to_hf

    hf_config, tensors = shoshin_to_hf(model)
    hf_config.update(bos_token_id=0, eos_token_id=0)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config))
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="t0", eos_token="t0", unk_token="t0"
    ).save_pretrained(folder)
    return folder


def load_transformers(folder: Path, device: str):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa").to(device).eval()


def hf_generate(hf, prompt: list[int], n: int) -> list[int]:
    device = hf.device
    with torch.inference_mode():
        out = hf.generate(
            torch.tensor([prompt], device=device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def ctranslate2_generators(folder: Path, out: Path, device: str, threads: int) -> dict:
    """CTranslate2 generators on the checkpoint's weights: float32 and its int8 engine.

    None where CTranslate2 is not installed or cannot run on `device` (its PyPI wheels need CUDA
    12 libraries a GPU machine may not have): the comparisons with it are then left out, said so.
    """
    try:
        import ctranslate2

        ctranslate2.converters.TransformersConverter(str(folder)).convert(str(out), force=True)
        int8 = "int8_float32" if device == "cpu" else "int8_float16"
        return {
            f"ctranslate2 {kind}": ctranslate2.Generator(
                str(out), device=device, compute_type=kind, intra_threads=threads
            )
            for kind in ("float32", int8)
        }
    except (ImportError, RuntimeError, OSError) as e:
        print(f"# CTranslate2 left out on {device}: {str(e).splitlines()[0]}")
        return None


def ct2_generate(generator, prompt: list[int], n: int) -> list[int]:
    result = generator.generate_batch(
        [[f"t{i}" for i in prompt]],
        max_length=n,
        min_length=n,
        sampling_topk=1,
        include_prompt_in_result=False,
    )
    return result[0].sequences_ids[0]


def timed_stream(
    engine: Engine, prompt: list[int], n: int, cache=None
) -> tuple[list[int], list[float]]:
    """Tokens and the wall time at which each arrived (relative to the start)."""
    start = time.perf_counter()
    tokens, times = [], []
    for token in engine.stream(prompt, SamplingParams(n, temperature=0), cache):
        tokens.append(token)
        times.append(time.perf_counter() - start)
    return tokens, times


def round_robin(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each contender over `rounds` rounds, contenders interleaved."""
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def naive_step_seconds(model: GPT, length: int, repeats: int = 2) -> float:
    """Time of one naive step (re-run the whole prefix of `length` tokens, pick the argmax)."""
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=model.wte.weight.device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            int(model(ids)[:, -1].argmax())
            best = min(best, time.perf_counter() - t)
    return best


def read_bandwidth(device: str) -> float:
    """Bytes/s of reading a 1 GiB tensor (a sum), best of 5, with this process's thread count."""
    x = torch.ones(2**28, device=device)  # 1 GiB of float32
    float(x.sum())
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        float(x.sum())
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def bytes_per_token(model: GPT, position: int) -> int:
    """Bytes a decode step reads: every weight of every layer and the head, one row of each
    embedding, and the keys and values of `position` earlier tokens."""
    total = 0  # a tied lm_head is counted once, as the head (it reads the whole embedding matrix)
    for module in model.modules():
        bias = getattr(module, "bias", None)
        bias_bytes = 0 if bias is None else bias.numel() * bias.element_size()
        if isinstance(module, Int4Linear):  # half a byte per weight, two bf16 per group
            total += module.packed.numel() + 2 * module.scales_and_zeros.numel() + bias_bytes
        elif isinstance(module, Int8Linear):  # int8 weights and a float scale per output channel
            total += module.in_features * module.out_features + 4 * module.out_features + bias_bytes
        elif isinstance(module, PackedLinear):
            total += 2 * module.in_features * module.out_features + bias_bytes
        elif isinstance(module, TransposedLinear):
            total += sum(b.numel() * b.element_size() for b in module.buffers())
        elif isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    c = model.config
    size = model.wte.weight.element_size()
    return total + 2 * c.n_embd * size + 2 * c.n_layer * position * c.n_embd * size


MATMUL_OPS = ("aten::addmm", "aten::mm", "quantized::linear_dynamic", "aten::_weight_int")


def decode_split(engine: Engine, prompt: list[int], n: int) -> dict[str, float]:
    """Seconds per decoded token: wall time (unprofiled, best of 2), and under torch.profiler the
    self time of the matmul kernels, of every other op, and the rest (Python, dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(n, temperature=0)
    engine.generate(prompt, params)
    wall = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        engine.generate(prompt, params)
        wall = min(wall, time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate(prompt, params)
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key.startswith(MATMUL_OPS)) / 1e6
    ops = sum(e.self_cpu_time_total for e in events if e.key.startswith(("aten::", "quantized::")))
    ops = ops / 1e6 - matmul
    return {
        "wall": wall / n,
        "matmul": matmul / n,
        "ops": ops / n,
        "rest": max(0.0, wall - matmul - ops) / n,
    }


def val_loss(model, windows: torch.Tensor) -> float:
    """Mean next-token loss over every window (64 at a time)."""
    total = 0.0
    with torch.no_grad():
        for chunk in windows.split(64):
            total += float(model(chunk[:, :-1], targets=chunk[:, 1:])) * len(chunk)
    return total / len(windows)


def small_trained_model(steps: int):
    """Train a small GPT for a few hundred steps (seconds to a minute); return it and the whole
    validation split cut into windows."""
    from shoshin.data.dataset import prepare_data
    from shoshin.loading import load_run
    from shoshin.training.runner import train

    quiet = lambda *a, **k: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            "tiny",
            [f"train.max_steps={steps}", "model.n_embd=128", "model.n_head=4", "model.n_layer=4",
             "train.sample_tokens=0"],
        )  # fmt: skip
        run = train(config, Path(tmp), log=quiet)
        model, _ = load_run(run)
        data = prepare_data(run.config.data, log=quiet)
    block = model.config.block_size
    n = len(data.val.tokens) // (block + 1) * (block + 1)  # the whole split, in windows
    tokens = torch.from_numpy(data.val.tokens[:n].astype("int64"))
    return model, tokens.view(-1, block + 1)


def describe_machine(args) -> None:
    import transformers

    try:
        import ctranslate2

        ct2_version = ctranslate2.__version__
    except ImportError:
        ct2_version = "not installed"

    f = cpu_features()
    flags = [k for k in ("avx512_bf16", "amx_bf16", "amx_int8", "vnni") if f[k]]
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(
        f"# generation benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"# CPU: {f['model']} ({os.cpu_count()} cores), ATen capability {f['capability']}, "
        f"matrix instructions: {', '.join(flags) or 'none'}\n"
        f"# device {args.device}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, ctranslate2 {ct2_version}, "
        f"threads {torch.get_num_threads()}, load average {load[0]}"
    )
    if args.device == "cuda":
        print(f"# GPU: {torch.cuda.get_device_name()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--new-tokens", type=int, default=64, help="decoded per timed run (2)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds; best is kept")
    parser.add_argument("--prefill", type=int, default=512, help="prompt length for (3)")
    parser.add_argument("--positions", type=int, default=1000, help="cached run length for (4)")
    parser.add_argument("--train-steps", type=int, default=300, help="for the val-loss comparison")
    parser.add_argument("--quick", action="store_true", help="small counts: checks that it runs")
    parser.add_argument(
        "--sections", default="1,2,3,4,5,6,7,9", help="which parts to run (8: compiled, slow)"
    )
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.positions, args.train_steps, args.rounds = 8, 120, 20, 1
        args.prefill = 64
    torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    device = args.device
    describe_machine(args)

    plain = gpt2_small(seed=0)
    precisions = {
        "fp32": ("fp32", None),
        "bf16": ("bf16", None),
        "int8": ("fp32", "int8"),
        "int4": ("fp32", "int4"),
    }
    shoshin = {  # what `shoshin sample/chat/serve --dtype/--quantize` run
        name: prepare_for_inference(copy.deepcopy(plain).to(device), d, q)
        for name, (d, q) in precisions.items()
    }
    engines = {name: Engine(m) for name, m in shoshin.items()}
    prompt = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(1)).tolist()
    workdir = tempfile.TemporaryDirectory(prefix="shoshin-bench-")  # removed at exit
    tmp = Path(workdir.name)
    folder = write_transformers_checkpoint(plain, tmp / "hf")
    hf = load_transformers(folder, device)
    ct2 = ctranslate2_generators(folder, tmp / "ct2", device, args.threads)
    greedy = lambda n: SamplingParams(n, temperature=0)  # noqa: E731

    if "1" in sections:
        n = 64 if not args.quick else 16
        cached = engines["fp32"].generate(prompt, greedy(n))
        naive = naive_generate(shoshin["fp32"], prompt, greedy(n))
        theirs = hf_generate(hf, prompt, n)
        print(f"\n## 1. first {n} greedy tokens (fp32)")
        same_ct2 = ""
        if ct2:
            theirs_ct2 = ct2_generate(ct2["ctranslate2 float32"], prompt, n)
            same_ct2 = f"== CTranslate2 float32: {cached == theirs_ct2}   "
        print(
            f"cached == naive: {cached == naive}   == transformers: {cached == theirs}   "
            f"{same_ct2}({len(set(cached))} distinct)"
        )

    if "2" in sections:
        n = args.new_tokens
        contenders: dict[str, Callable[[], object]] = {
            "transformers fp32": lambda: hf_generate(hf, prompt, n),
            **{name: (lambda g=g: ct2_generate(g, prompt, n)) for name, g in (ct2 or {}).items()},
            **{
                f"shoshin {name}": (lambda e=e: e.generate(prompt, greedy(n)))
                for name, e in engines.items()
            },
        }
        for run in contenders.values():  # warm-up: first-call allocations and kernel selection
            run()
        best = round_robin(contenders, args.rounds)
        tps = {name: n / s for name, s in best.items()}
        print(
            f"\n## 2. decode, batch 1: {len(prompt)}-token prompt + {n} greedy tokens, "
            f"best of {args.rounds} round-robin rounds"
        )
        base = tps["transformers fp32"]
        for name, t in tps.items():
            print(f"{name:<28} {t:8.2f} tok/s   {t / base:5.2f}x transformers")
        if ct2:
            int8_ct2 = next(k for k in tps if k.startswith("ctranslate2 int8"))
            r = tps["shoshin int8"] / tps[int8_ct2]
            target("20.1 int8 vs CTranslate2 int8 (>= 1.0x)", f"{r:.2f}x", r >= 1.0)
            r = tps["shoshin int4"] / tps[int8_ct2]
            target("20.2 int4 vs CTranslate2 int8 (>= 1.3x)", f"{r:.2f}x", r >= 1.3)
            r = tps["shoshin fp32"] / tps["ctranslate2 float32"]
            target("20.3 fp32 vs CTranslate2 float32 (>= 1.0x)", f"{r:.2f}x", r >= 1.0)
        r = tps["shoshin fp32"] / base
        target("2. fp32 vs transformers generate fp32 (>= 1.5x)", f"{r:.2f}x", r >= 1.5)
        r = tps["shoshin bf16"] / tps["shoshin fp32"]
        if device == "cpu" and not cpu_has_bf16_matmul():
            print("  (this CPU has no AVX-512 BF16 or AMX: bf16 is not expected to be faster)")
            target("3. bf16 vs shoshin fp32 (>= 1.5x with bf16 instructions)", f"{r:.2f}x", None)
        else:
            target("3. bf16 vs shoshin fp32 (>= 1.5x)", f"{r:.2f}x", r >= 1.5)

    if "3" in sections:
        long_prompt = torch.randint(
            0, VOCAB, (args.prefill,), generator=torch.Generator().manual_seed(3)
        ).tolist()
        contenders = {
            "transformers fp32": lambda: hf_generate(hf, long_prompt, 1),
            **{
                f"shoshin {name}": (lambda e=e: e.generate(long_prompt, greedy(1)))
                for name, e in engines.items()
            },
        }
        best = round_robin(contenders, args.rounds)
        print(f"\n## 3. time to first token, {args.prefill}-token prompt, batch 1")
        for name, s in best.items():
            print(f"{name:<28} {s * 1e3:8.0f} ms")
        r = best["shoshin fp32"] / best["transformers fp32"]
        target(
            "20.4 TTFT at the default precision (fp32) vs transformers (<= 0.5x)",
            f"{r:.2f}x",
            r <= 0.5,
        )
        auto = measured_speeds()["fastest"] if device == "cpu" else "bf16"
        r = best[f"shoshin {auto}"] / best["transformers fp32"]
        print(f"  (--dtype auto is {auto} here: {r:.2f}x transformers fp32)")

    if "4" in sections:
        n_pos = args.positions
        _, times = timed_stream(engines["fp32"], prompt, n_pos)
        per_token = [times[0]] + [b - a for a, b in zip(times, times[1:], strict=False)]
        by_pos = {len(prompt) + i: s for i, s in enumerate(per_token)}

        def mean_ms(lo, hi):
            vals = [by_pos[p] for p in range(lo, hi + 1) if p in by_pos]
            return 1e3 * sum(vals) / len(vals) if vals else float("nan")

        hi_lo, hi_hi = (900, 1000) if n_pos + len(prompt) > 1000 else (n_pos - 50, n_pos)
        early, late = mean_ms(50, 100), mean_ms(hi_lo, hi_hi)
        print(f"\n## 4. ms/token by position (shoshin fp32, cached, {n_pos} new tokens)")
        print(f"positions 50-100: {early:.1f} ms   positions {hi_lo}-{hi_hi}: {late:.1f} ms")
        target(
            "6. per-position cost flat (late/early <= 1.5x)",
            f"{late / early:.2f}x",
            late / early <= 1.5,
        )
        # the naive path re-runs the prefix: its step time at a few lengths, integrated
        lengths = [len(prompt) + round(i * (n_pos - 1) / 4) for i in range(5)]
        step_s = [naive_step_seconds(shoshin["fp32"], min(L, 1024)) for L in lengths]
        naive_s = step_s[0] + sum(
            (step_s[i] + step_s[i + 1]) / 2 * (lengths[i + 1] - lengths[i]) for i in range(4)
        )
        print(
            f"naive (estimated from step times {', '.join(f'{s * 1e3:.0f}' for s in step_s)} ms at "
            f"lengths {lengths}): {n_pos / naive_s:.2f} tok/s vs cached {n_pos / times[-1]:.2f} "
            f"tok/s = {naive_s / times[-1]:.1f}x"
        )

    if "5" in sections:
        bw = read_bandwidth(device)
        k = args.new_tokens
        best = round_robin(
            {name: (lambda e=e: e.generate(prompt, greedy(k))) for name, e in engines.items()},
            args.rounds,
        )
        print(f"\n## 5. memory bandwidth (read, {args.threads} thread(s)): {bw / 1e9:.1f} GB/s")
        print("precision   tok/s   MB/token  bandwidth used")
        for name, s in best.items():
            t = k / s
            used = bytes_per_token(shoshin[name], len(prompt) + k // 2) * t / bw
            print(
                f"{name:<8} {t:8.2f}  {bytes_per_token(shoshin[name], 0) / 1e6:8.0f}  {100 * used:13.0f}%"
            )

    if "6" in sections:
        trained, windows = small_trained_model(args.train_steps)
        base_loss = val_loss(trained, windows)
        print(
            f"\n## 6. quality: whole-split val loss of a small GPT ({args.train_steps} steps, "
            f"{windows.numel()} tokens): {base_loss:.4f} fp32; greedy agreement: the share of 32 "
            "greedy tokens from 8 val prompts equal to fp32's before the first difference"
        )
        prompts = windows[:8, :16].tolist()
        reference = [Engine(trained).generate(p, greedy(32)) for p in prompts]
        for name, (d, q) in precisions.items():
            if name == "fp32":
                continue
            fast = prepare_for_inference(copy.deepcopy(trained), d, q)
            dloss = val_loss(fast, windows) - base_loss
            agree = sum(
                common_prefix(Engine(fast).generate(p, greedy(32)), ref) / 32
                for p, ref in zip(prompts, reference, strict=True)
            ) / len(prompts)
            print(f"{name:<6} val-loss change {dloss:+.4f}   greedy agreement {agree:.0%}")
            if name in ("int8", "int4"):
                target(
                    f"20.2 {name} quality (|val-loss change| <= 0.05)",
                    f"{dloss:+.4f}, greedy agreement {agree:.0%}",
                    abs(dloss) <= 0.05,
                )

    if "7" in sections:
        engine = engines["fp32"]
        print("\n## 7. time to first token of turn 5 (32-token messages, 64-token replies, fp32)")
        gen = torch.Generator().manual_seed(2)
        cache = engine.new_cache(1)
        history: list[int] = []
        for turn in range(1, 6):
            history += torch.randint(0, VOCAB, (32,), generator=gen).tolist()
            stream = engine.stream(history, greedy(64), cache)
            t = time.perf_counter()
            first = next(stream)
            ttft_reuse = time.perf_counter() - t
            reply = [first, *stream]
            if turn < 5:  # the cache holds history + reply[:-1]: a prefix of the next prompt
                history += reply
        fresh = engine.stream(history, greedy(1))
        t = time.perf_counter()
        next(fresh)
        ttft_fresh = time.perf_counter() - t
        print(
            f"history {len(history)} tokens: reused cache {ttft_reuse * 1e3:.0f} ms, re-processing "
            f"everything {ttft_fresh * 1e3:.0f} ms ({ttft_fresh / ttft_reuse:.1f}x)"
        )

    if "8" in sections:
        modes = ["compile"] + (["graphs"] if device == "cuda" else [])
        n = args.new_tokens
        print(f"\n## 8. static decode step, {len(prompt)}-token prompt + {n} greedy tokens")
        for name in ("fp32", "bf16") if device == "cpu" else ("bf16",):
            eager = engines[name]
            reference = eager.generate(prompt, greedy(n))
            for mode in modes:
                fast = Engine(shoshin[name], decode=mode)
                start = time.perf_counter()
                same = fast.generate(prompt, greedy(n)) == reference  # compiles / captures
                first = time.perf_counter() - start
                if fast.static.failed:
                    print(f"{name} {mode}: fell back to eager (the line above says why)")
                    continue
                best = round_robin(
                    {
                        "eager": lambda e=eager: e.generate(prompt, greedy(n)),
                        mode: lambda e=fast: e.generate(prompt, greedy(n)),
                    },
                    args.rounds,
                )
                print(
                    f"{name} {mode}: {n / best[mode]:.1f} tok/s vs eager {n / best['eager']:.1f} "
                    f"({best['eager'] / best[mode]:.2f}x); first call {first:.1f} s "
                    f"(compile/capture {sum(fast.static.first_call_s.values()):.1f} s); "
                    f"greedy tokens equal to eager: {same}"
                )

    if "9" in sections:
        n = args.new_tokens
        print(f"\n## 9. where a batch-1 decode step's time goes ({n} tokens, torch.profiler)")
        for name in ("fp32", "int8", "int4"):
            split = decode_split(engines[name], prompt, n)
            print(
                f"{name:<5} {split['wall'] * 1e3:6.1f} ms/token: matmuls {split['matmul'] * 1e3:5.1f} "
                f"ms ({split['matmul'] / split['wall']:.0%}), other ops {split['ops'] * 1e3:5.1f} ms "
                f"({split['ops'] / split['wall']:.0%}), outside any op (Python, dispatch) "
                f"{split['rest'] * 1e3:5.1f} ms ({split['rest'] / split['wall']:.0%})"
            )

    print("\n## targets")
    for name, figure, met in RESULTS:
        print(f"{'n/a ' if met is None else ('PASS' if met else 'MISS')}  {name}: {figure}")


if __name__ == "__main__":
    main()
