"""Generation benchmark: shoshin's cached engine vs its naive reference vs transformers generate().

A GPT-2-124M-shaped model with random weights; the identical weights go into
transformers.GPT2LMHeadModel through shoshin's interop code. Batch 1, one process, the same thread
count for everyone. Prints:

1. correctness: the first 64 greedy tokens of cached, naive and transformers are identical;
2. tokens/s for 512 new tokens after a 16-token prompt: cached vs naive, cached vs transformers;
3. ms/token by position: cached mean at positions 900-1000 vs 50-100;
4. memory-bandwidth utilisation: bytes read per token x tokens/s / measured read bandwidth,
   for fp32, bf16, int8 weight-only (fp32 and bf16 activations), and their quality cost
   (val-loss difference on a small model trained on the spot);
5. multi-turn chat: time to first token of turn 5 with the reused cache vs re-processing it all.

    python benchmarks/generation.py            # a few minutes on an idle 2-core CPU
    python benchmarks/generation.py --quick    # smaller counts, to check the script runs
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from shoshin.config import ModelConfig, load_config
from shoshin.generation import Engine, SamplingParams, naive_generate
from shoshin.generation.precision import Int8Linear, TransposedLinear, prepare_for_inference
from shoshin.models import GPT


def gpt2_small(seed: int) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        arch="gpt", n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257
    )
    model = GPT(config).eval()
    with torch.no_grad():  # wider random matrices: greedy output that wanders, not one token
        for name, p in model.named_parameters():
            if p.dim() == 2 and name != "wpe.weight":
                p.normal_(0.0, 0.05)
    return model


def to_transformers(model: GPT):
    """The same weights in transformers.GPT2LMHeadModel, through shoshin's interop converter."""
    from safetensors.torch import save_file
    from transformers import GPT2LMHeadModel

    from shoshin.interop.hf import shoshin_to_hf

    hf_config, tensors = shoshin_to_hf(model)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(hf_config))
        save_file(tensors, str(Path(tmp) / "model.safetensors"))
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa").eval()
    return hf


def hf_generate(hf, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


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


def naive_step_seconds(model: GPT, length: int, repeats: int = 2) -> float:
    """Time of one naive step (re-run the whole prefix of `length` tokens, pick the argmax)."""
    ids = torch.randint(0, model.config.vocab_size, (1, length))
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            model(ids)[:, -1].argmax()
            best = min(best, time.perf_counter() - t)
    return best


def read_bandwidth() -> float:
    """Bytes/s of reading a 1 GiB tensor (a sum), best of 5, with this process's thread count."""
    x = torch.ones(2**28)  # 1 GiB of float32
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def bytes_per_token(model: GPT, position: int) -> int:
    """Bytes a decode step reads: every weight of every layer and the head, one row of each
    embedding, and the keys and values of `position` earlier tokens."""
    total = 0  # a tied lm_head is counted once, as the head (it reads the whole embedding matrix)
    for module in model.modules():
        if isinstance(module, (Int8Linear, TransposedLinear)):
            total += sum(b.numel() * b.element_size() for b in module.buffers())
        elif isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    c = model.config
    emb = model.wte.weight
    total += 2 * c.n_embd * emb.element_size()
    kv_dtype_size = emb.element_size()
    total += 2 * c.n_layer * position * c.n_embd * kv_dtype_size
    return total


def val_loss(model, windows: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(windows[:, :-1], targets=windows[:, 1:]))


def small_trained_model(steps: int):
    """Train a small GPT for a few hundred steps (seconds to a minute), return it and val windows."""
    from shoshin.data.dataset import prepare_data
    from shoshin.loading import load_run
    from shoshin.training.trainer import train

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
    tokens = torch.from_numpy(data.val.tokens[: 64 * (block + 1)].astype("int64"))
    return model, tokens.view(-1, block + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--positions", type=int, default=1000, help="cached run length for (3)")
    parser.add_argument("--precision-tokens", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=300, help="for the val-loss comparison")
    parser.add_argument("--quick", action="store_true", help="small counts: checks that it runs")
    parser.add_argument("--sections", default="1,2,4,5", help="which parts to run (3 comes with 2)")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.positions, args.precision_tokens, args.train_steps = 64, 120, 8, 20
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    naive_64_s = None
    import transformers

    print(
        f"# generation benchmark  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, threads {torch.get_num_threads()}"
    )
    plain = gpt2_small(seed=0)
    hf = to_transformers(plain)
    model = prepare_for_inference(copy.deepcopy(plain))  # what `shoshin sample/chat` runs
    engine = Engine(model)
    prompt = torch.randint(0, 50257, (16,), generator=torch.Generator().manual_seed(1)).tolist()

    if "1" in sections:
        # 1. correctness
        cached = engine.generate(prompt, SamplingParams(64, temperature=0))
        t = time.perf_counter()
        naive = naive_generate(model, prompt, SamplingParams(64, temperature=0))
        naive_64_s = time.perf_counter() - t
        theirs = hf_generate(hf, prompt, 64)
        print("\n## 1. first 64 greedy tokens")
        print(f"cached == naive: {cached == naive}   cached == transformers: {cached == theirs}")
        print(f"distinct tokens among the 64: {len(set(cached))}")

    if "2" in sections:
        # 2 and 3: one cached run gives tokens/s over the first N tokens and ms/token by position
        n_pos = max(args.positions, args.new_tokens)
        _, times = timed_stream(engine, prompt, n_pos)
        cached_s = times[args.new_tokens - 1]
        t = time.perf_counter()
        hf_generate(hf, prompt, args.new_tokens)
        hf_s = time.perf_counter() - t
        # naive: measured on its first 64 tokens; for N tokens, integrate the measured step time at
        # a few prefix lengths (one naive step at length L re-runs L tokens)
        lengths = [len(prompt) + round(i * (args.new_tokens - 1) / 4) for i in range(5)]
        step_s = [naive_step_seconds(model, L) for L in lengths]
        naive_est_s = (
            sum((step_s[i] + step_s[i + 1]) / 2 * (lengths[i + 1] - lengths[i]) for i in range(4))
            + step_s[0]
        )
        ab: dict[str, list[float]] = {"shoshin": [], "transformers": []}
        for _ in range(5):  # interleaved, so that a change in the machine's load hits both
            t = time.perf_counter()
            engine.generate(prompt, SamplingParams(32, temperature=0))
            ab["shoshin"].append((time.perf_counter() - t) / 32)
            t = time.perf_counter()
            hf_generate(hf, prompt, 32)
            ab["transformers"].append((time.perf_counter() - t) / 32)
        med = {k: sorted(v)[len(v) // 2] for k, v in ab.items()}
        n = args.new_tokens
        print(
            f"\n## 2. tokens/s, {n} new tokens after a {len(prompt)}-token prompt (fp32, batch 1)"
        )
        print(f"shoshin cached        {n / cached_s:8.2f} tok/s")
        print(
            f"transformers generate {n / hf_s:8.2f} tok/s   cached/transformers = {hf_s / cached_s:.2f}x"
        )
        print(
            f"shoshin naive         {n / naive_est_s:8.2f} tok/s   cached/naive = "
            f"{naive_est_s / cached_s:.1f}x  (estimated from naive step times at lengths {lengths}: "
            + ", ".join(f"{s * 1e3:.0f}" for s in step_s)
            + " ms)"
        )
        print(
            f"interleaved A/B, 5 x 32 tokens each: shoshin {med['shoshin'] * 1e3:.0f} ms/token, "
            f"transformers {med['transformers'] * 1e3:.0f} ms/token (medians): "
            f"{med['transformers'] / med['shoshin']:.2f}x"
        )
        if naive_64_s is not None:
            print(
                f"first 64 tokens only: naive {64 / naive_64_s:.2f} tok/s vs cached "
                f"{64 / times[63]:.2f} tok/s = {naive_64_s / times[63]:.1f}x"
            )

        print(f"\n## 3. ms/token by position (cached, {n_pos} new tokens)")
        per_token = [times[0]] + [b - a for a, b in zip(times, times[1:], strict=False)]
        by_pos = {len(prompt) + i: s for i, s in enumerate(per_token)}  # position of the token made

        def mean_ms(lo, hi):
            vals = [by_pos[p] for p in range(lo, hi + 1) if p in by_pos]
            return 1e3 * sum(vals) / len(vals) if vals else float("nan")

        hi_lo, hi_hi = (900, 1000) if n_pos + len(prompt) > 1000 else (n_pos - 50, n_pos)
        early, late = mean_ms(50, 100), mean_ms(hi_lo, hi_hi)
        print(
            f"positions 50-100: {early:.1f} ms   positions {hi_lo}-{hi_hi}: {late:.1f} ms   ratio {late / early:.2f}"
        )

    if "4" in sections:
        # 4. bandwidth and precision
        bw = read_bandwidth()
        print(f"\n## 4. memory bandwidth (read, {args.threads} thread(s)): {bw / 1e9:.1f} GB/s")
        trained, windows = small_trained_model(args.train_steps)
        print(
            "precision       tok/s  speed-up  MB/token  bandwidth used  val-loss diff (small model)"
        )
        base_loss = val_loss(trained, windows)
        variants = [("fp32", None), ("bf16", None), ("fp32", "int8"), ("bf16", "int8")]
        models = [prepare_for_inference(copy.deepcopy(plain), d, q) for d, q in variants]
        k = args.precision_tokens
        seconds: list[list[float]] = [[] for _ in variants]
        for _ in range(3):  # round robin, so that a change in the machine's load hits all alike
            for i, m in enumerate(models):
                _, ts = timed_stream(Engine(m), prompt, k + 1)
                seconds[i].append(ts[-1] - ts[0])  # decode only: positions 17..17+k
        tps = [k / sorted(s)[1] for s in seconds]  # median of 3
        for (dtype, quant), m, t in zip(variants, models, tps, strict=True):
            used = bytes_per_token(m, len(prompt) + k // 2) * t / bw
            q = prepare_for_inference(copy.deepcopy(trained), dtype, quant)
            dloss = val_loss(q, windows) - base_loss
            name = dtype + ("+int8" if quant else "")
            print(
                f"{name:<12} {t:8.2f}  {t / tps[0]:7.2f}x  {bytes_per_token(m, 0) / 1e6:8.0f}"
                f"  {100 * used:13.0f}%  {dloss:+.4f}"
            )
        print(f"(val loss fp32 of the small model: {base_loss:.4f}, {args.train_steps} steps)")

    if "5" in sections:
        # 5. multi-turn chat: each turn a 32-token user message and a 64-token reply
        print("\n## 5. time to first token of turn 5 (32-token messages, 64-token replies)")
        gen = torch.Generator().manual_seed(2)
        cache = engine.new_cache(1)
        history: list[int] = []
        for turn in range(1, 6):
            history += torch.randint(0, 50257, (32,), generator=gen).tolist()
            stream = engine.stream(history, SamplingParams(64, temperature=0), cache)
            t = time.perf_counter()
            first = next(stream)
            ttft_reuse = time.perf_counter() - t
            reply = [first, *stream]
            if turn < 5:
                history += (
                    reply  # the cache holds history + reply[:-1]: a prefix of the next prompt
                )
        fresh = engine.stream(history, SamplingParams(1, temperature=0))
        t = time.perf_counter()
        next(fresh)
        ttft_fresh = time.perf_counter() - t
        print(
            f"history {len(history)} tokens: reused cache {ttft_reuse * 1e3:.0f} ms, re-processing "
            f"everything {ttft_fresh * 1e3:.0f} ms ({ttft_fresh / ttft_reuse:.1f}x)"
        )


if __name__ == "__main__":
    main()
