"""Serving throughput: aggregate generated tokens/s with 1, 4 and 16 concurrent streaming clients.

One real server (uvicorn, continuous batching) runs in a child process; the clients are threads of
this process, each streaming a /v1/completions request over loopback. Every client asks for the
same number of tokens from a prompt of its own, and the tokenizer has no end token, so every reply
runs to max_tokens. Models have random weights (speed does not depend on them): the `tiny` preset,
and a GPT-2-124M-shaped GPT (12 layers, 12 heads, 768 wide, 1024 positions, 50257 tokens).

Figures: aggregate tokens/s (all tokens received / wall time from the first request to the last
token), its ratio to the single-client figure (target: 16 clients >= 6x one client), time to first
token (TTFT) per client, and the per-step overhead of the decode loop the server runs: the time of
a 16-row step split into the model's forward pass, sampling, and the rest (bookkeeping, Python per
row), each as a share of the step.

    python benchmarks/serving.py                       # both models, a few minutes on a 2-core CPU
    python benchmarks/serving.py --models tiny --tokens 32   # a quick look
    python benchmarks/serving.py --quantize int8       # the server as `shoshin serve --quantize int8`
    python benchmarks/serving.py --device cuda --dtype bf16   # on a GPU
    python benchmarks/serving.py --prefix-only --models gpt2-124m   # prefix reuse alone

Prefix reuse (issue 20, target 5): a chat client resending a 512-token history plus 16 new tokens,
time to first token on a server with prefix reuse against the same server without it, and the
largest difference of their logprobs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import threading
import time

import httpx
import torch

from shoshin.config import ModelConfig, load_config
from shoshin.data.tokenizers import CharTokenizer
from shoshin.generation import Engine, SamplingParams
from shoshin.generation.precision import prepare_for_inference
from shoshin.models import build_model


def model_config(name: str) -> ModelConfig:
    if name == "tiny":
        config = load_config("tiny").model
        config.vocab_size = 96
        return config
    return ModelConfig(
        arch="gpt",
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        vocab_size=50257,
        dropout=0.0,
    )


def tokenizer_for(vocab_size: int) -> CharTokenizer:
    """One character per id and no special tokens: nothing ends a reply before max_tokens."""
    chars, code = [], 0x100
    while len(chars) < vocab_size:
        if not 0xD800 <= code <= 0xDFFF:  # surrogates are not characters JSON can carry
            chars.append(chr(code))
        code += 1
    return CharTokenizer(chars, [])


def served_model(name: str, device: str, dtype: str, quantize: str | None) -> torch.nn.Module:
    """The model with random weights, prepared as `shoshin serve --dtype/--quantize` prepares it."""
    torch.manual_seed(0)
    model = build_model(model_config(name)).to(device)
    return prepare_for_inference(model, dtype, quantize)


def serve(
    name: str, port: int, max_batch: int, threads: int, device: str, dtype: str, quantize
) -> None:
    """The child process: build the model and serve it until terminated."""
    from shoshin.serving import ServeConfig, create_app
    from shoshin.serving.server import serve as run_server

    torch.set_num_threads(threads)
    config = model_config(name)
    model = served_model(name, device, dtype, quantize)
    app = create_app(
        model, tokenizer_for(config.vocab_size), name, ServeConfig(max_batch=max_batch)
    )
    run_server(app, "127.0.0.1", port)


def stream_one(url: str, prompt: str, max_tokens: int, out: dict) -> None:
    """One streaming client: record when it started, its first token and its token count."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "stream": True}
    body["stream_options"] = {"include_usage": True}
    out["start"] = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"] and "first" not in out:
                out["first"] = time.perf_counter()
            if chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]
    out["end"] = time.perf_counter()


def measure(url: str, clients: int, prompt_len: int, max_tokens: int, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(clients)
    tok = tokenizer_for(vocab)
    prompts = [
        tok.decode(torch.randint(0, vocab, (prompt_len,), generator=gen).tolist())
        for _ in range(clients)
    ]
    results = [{} for _ in range(clients)]
    threads = [
        threading.Thread(target=stream_one, args=(url, p, max_tokens, r))
        for p, r in zip(prompts, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["first"] - r["start"] for r in results]
    return {
        "clients": clients,
        "tokens": tokens,
        "wall_s": wall,
        "tok_s": tokens / wall,
        "ttft_mean_s": statistics.mean(ttft),
        "ttft_max_s": max(ttft),
    }


@torch.no_grad()
def step_profile(name: str, args, rows: int = 16, steps: int = 8) -> dict[str, float]:
    """The decode loop the server runs (the engine's Batch), no HTTP: seconds per step of a
    `rows`-row batch, split into the model's forward pass, sampling and the rest."""
    torch.set_num_threads(args.threads)
    model = served_model(name, args.device, args.dtype, args.quantize)
    engine = Engine(model)
    batch = engine.new_batch(rows)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=10**6, temperature=0.8)  # as the clients ask
    prompts = [
        torch.randint(0, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(rows)
    ]
    batch.add({b: engine.generation(p, params) for b, p in enumerate(prompts)})
    forward = [0.0]  # seconds inside model.forward, summed by the two hooks
    started: list[float] = []

    def before(module, inputs) -> None:
        synchronize(args.device)  # on a GPU, time the forward's kernels, not their launch
        started.append(time.perf_counter())

    def after(module, inputs, output) -> None:
        synchronize(args.device)
        forward[0] += time.perf_counter() - started[-1]

    pre = model.register_forward_pre_hook(before)
    post = model.register_forward_hook(after)
    try:
        batch.sample()
        batch.advance()  # warm-up
        forward[0] = 0.0
        sample_s = advance_s = 0.0
        for _ in range(steps):
            t = time.perf_counter()
            batch.sample()
            t2 = time.perf_counter()
            batch.advance()
            sample_s += t2 - t
            advance_s += time.perf_counter() - t2
    finally:
        pre.remove()
        post.remove()
    step = (sample_s + advance_s) / steps
    return {
        "step": step,
        "forward": forward[0] / steps,
        "sampling": sample_s / steps,
        "rest": (advance_s - forward[0]) / steps,
    }


@torch.no_grad()
def decode_ceiling(name: str, args, steps: int = 6) -> dict[int, float]:
    """The model alone, no server: tokens/s of one cached decode step at batch 1 and 16.

    This is what continuous batching can at best turn into aggregate throughput.
    """
    torch.set_num_threads(args.threads)
    model = served_model(name, args.device, args.dtype, args.quantize)
    vocab = model.config.vocab_size
    out = {}
    for batch in (1, 16):
        cache = model.new_cache(batch)
        model(torch.randint(0, vocab, (batch, args.prompt_len), device=args.device), cache=cache)
        tokens = torch.randint(0, vocab, (batch, 1), device=args.device)
        model(tokens, cache=cache)  # warm-up
        synchronize(args.device)
        start = time.perf_counter()
        for _ in range(steps):
            model(tokens, cache=cache)
        synchronize(args.device)
        out[batch] = batch * steps / (time.perf_counter() - start)
    return out


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer reads what the device did."""
    if device == "cuda":
        torch.cuda.synchronize()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_model(name: str, args) -> list[dict]:
    port = free_port()
    child = mp.get_context("spawn").Process(
        target=serve,
        args=(name, port, args.max_batch, args.threads, args.device, args.dtype, args.quantize),
        daemon=True,
    )
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(f"{url}/health").raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not child.is_alive():
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        vocab = model_config(name).vocab_size
        measure(url, 2, args.prompt_len, 4, vocab)  # warm-up: first-call allocations, kernels
        # Rounds interleave the client counts, so that a burst of load from other processes on a
        # shared machine hits all of them alike; each count keeps its best (least disturbed) round.
        rounds = [
            [measure(url, n, args.prompt_len, args.tokens, vocab) for n in args.clients]
            for _ in range(args.rounds)
        ]
        rows = [max(runs, key=lambda r: r["tok_s"]) for runs in zip(*rounds, strict=True)]
    finally:
        child.terminate()
        child.join()
    base = rows[0]["tok_s"]
    print(
        f"\n{name}: {args.tokens} tokens per client, {args.prompt_len}-token prompts, "
        f"max batch {args.max_batch}, {args.threads} torch threads, {args.device} {args.dtype}"
        f"{' + int8' if args.quantize else ''}, best of {args.rounds} rounds"
    )
    print(
        f"{'clients':>8} {'tokens':>7} {'wall s':>8} {'agg tok/s':>10} {'vs 1':>6} {'TTFT mean':>10} {'TTFT max':>9}"
    )
    for r in rows:
        print(
            f"{r['clients']:>8} {r['tokens']:>7} {r['wall_s']:>8.2f} {r['tok_s']:>10.1f} "
            f"{r['tok_s'] / base:>5.2f}x {r['ttft_mean_s']:>9.3f}s {r['ttft_max_s']:>8.3f}s"
        )
    return rows


def complete(url: str, prompt: str, max_tokens: int) -> tuple[float, str, list[float]]:
    """One greedy /v1/completions request: its wall time, text and token log-probabilities."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0}
    start = time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    choice = r.json()["choices"][0]
    return time.perf_counter() - start, choice["text"], choice["logprobs"]["token_logprobs"]


def prefix_reuse(name: str, args, history: int = 512, new: int = 16) -> tuple[float, float]:
    """A stateless chat client: a `history`-token conversation it sends back every turn with its
    reply and `new` tokens more. Time to first token (a 1-token request) of that next turn on a
    server with prefix reuse and on one without, best of args.rounds (each round a different
    new message), and the largest logprob difference of a 16-token reply between the two."""
    from shoshin.serving import ServeConfig, create_app
    from shoshin.serving.server import background_server

    torch.set_num_threads(args.threads)
    config = model_config(name)
    history = min(history, config.block_size - 16 - new - 16)  # the tiny model's window is short
    model = served_model(name, args.device, args.dtype, args.quantize)
    tok = tokenizer_for(config.vocab_size)
    gen = torch.Generator().manual_seed(5)
    text = lambda n: tok.decode(torch.randint(0, config.vocab_size, (n,), generator=gen).tolist())  # noqa: E731
    apps = {
        reuse: create_app(model, tok, name, ServeConfig(max_batch=2)) for reuse in (True, False)
    }
    apps[False].state.server.scheduler.prefixes = None  # the same server, recomputing everything
    with background_server(apps[True]) as with_url, background_server(apps[False]) as plain_url:
        urls = {True: with_url, False: plain_url}
        turn1 = text(history)
        _, reply, _ = complete(urls[True], turn1, 16)  # the reply the client sends back
        complete(urls[False], turn1, 16)
        best = {True: float("inf"), False: float("inf")}
        for _ in range(args.rounds):
            turn2 = turn1 + reply + text(new)
            for reuse, url in urls.items():
                best[reuse] = min(best[reuse], complete(url, turn2, 1)[0])
        logprobs = {reuse: complete(url, turn2, 16)[2] for reuse, url in urls.items()}
    diff = max(abs(a - b) for a, b in zip(logprobs[True], logprobs[False], strict=True))
    ratio = best[False] / best[True]
    print(
        f"\n{name}: prefix reuse, {history}-token history + 16-token reply + {new} new tokens, "
        f"best of {args.rounds}: first token {best[True] * 1e3:.0f} ms with reuse, "
        f"{best[False] * 1e3:.0f} ms without ({ratio:.1f}x); largest logprob difference of a "
        f"16-token greedy reply: {diff:.2e}"
    )
    return ratio, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "gpt2-124m"], choices=["tiny", "gpt2-124m"]
    )
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=48, help="tokens each client asks for")
    parser.add_argument("--prompt-len", type=int, default=12)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=2, help="repeat all client counts; keep the best"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--quantize", default=None, choices=["int8", "int4"])
    parser.add_argument(
        "--prefix-only", action="store_true", help="only the prefix-reuse measurement (target 20.5)"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else "?"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads "
        f"available, server uses {args.threads}; load average {load}"
    )
    verdicts = []
    for name in args.models:
        ratio, diff = prefix_reuse(name, args)
        ok = ratio >= 5 and diff <= 1e-4
        print(
            f"{'PASS' if ok else 'MISS'}  20.5 {name}: prefix reuse first token {ratio:.1f}x "
            f"sooner (>= 5x), logprobs within {diff:.1e} (<= 1e-4)"
        )
        if args.prefix_only:
            continue
        rows = bench_model(name, args)
        ceiling = decode_ceiling(name, args)
        print(
            f"model alone (no server), one decode step: batch 1 {ceiling[1]:.1f} tok/s, "
            f"batch 16 {ceiling[16]:.1f} tok/s, {ceiling[16] / ceiling[1]:.2f}x"
        )
        p = step_profile(name, args)
        print(
            f"16-row decode step of the engine's Batch: {p['step'] * 1e3:.1f} ms = forward "
            f"{p['forward'] * 1e3:.1f} ms ({100 * p['forward'] / p['step']:.0f}%) + sampling "
            f"{p['sampling'] * 1e3:.1f} ms ({100 * p['sampling'] / p['step']:.0f}%) + bookkeeping "
            f"and Python per row {p['rest'] * 1e3:.1f} ms ({100 * p['rest'] / p['step']:.0f}%)"
        )
        by_clients = {r["clients"]: r["tok_s"] for r in rows}
        if 1 in by_clients and 16 in by_clients:
            ratio = by_clients[16] / by_clients[1]
            verdicts.append((name, ratio))
    for name, ratio in verdicts:
        verdict = "PASS" if ratio >= 6 else "MISS"
        print(f"{verdict}  5. {name}: 16 streaming clients = {ratio:.2f}x one client (>= 6x)")


if __name__ == "__main__":
    main()
