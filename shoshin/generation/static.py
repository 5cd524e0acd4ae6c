"""Static-shape decode steps: one token per row through a compiled step or a replayed CUDA graph.

A decode step of the eager engine plans its attention on the host: it attends over exactly the
positions cached so far, so every step has new shapes and a new Python integer (the rows' length).
Handed to `torch.compile` as it is, each new length is a new specialisation: a recompile per
token until dynamo's recompile limit, then eager again (measured: 0.77 s per token for GPT-2-124M
on a 2-core CPU, ten times eager). A static step instead attends over the whole cache through a
mask built on the device from the rows' positions (`model.decode_static`), so its shapes depend
only on the cache: it compiles once per (rows, cache length), or is captured once per batch size
as a CUDA graph and replayed per token (as gpt-fast and vLLM do), which removes the few hundred
kernel launches per token that bound batch-1 decoding on a GPU.

Modes (`Engine(model, decode=...)`):
- "eager": the model's own forward; the reference every other mode is held to.
- "compile": the static step through torch.compile (inductor). The first call per shape compiles
  (seconds to minutes; `first_call_s` reports it); a failure prints one line and the engine stays
  eager.
- "graphs": on CUDA, the static step captured as a CUDA graph per batch size in GRAPH_BATCH_SIZES
  (a batch of n rows replays the smallest captured size >= n); anywhere else, eager.
- "auto": graphs on CUDA, eager on CPU (a compiled step has not been measured faster there).
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn

MODES = ("eager", "compile", "graphs", "auto")
GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
# Steps set up (compiled, or captured as graphs) for the most recent caches. The server keeps one
# cache; Engine.generate makes one per call, so a graph is captured again per call (about three
# forward passes) and a compiled step re-checks its guards.
MAX_RUNNERS = 8


def resolve_mode(mode: str, device: torch.device, model: nn.Module) -> str:
    """The mode that will run: a static mode needs a model with `decode_static`, and graphs need
    CUDA; "auto" is graphs on CUDA, else eager."""
    if mode not in MODES:
        raise ValueError(f"decode must be one of {', '.join(MODES)}; got {mode!r}")
    if not hasattr(model, "decode_static"):  # e.g. a recurrent model: no cache to make static
        return "eager"
    if mode == "auto":
        return "graphs" if device.type == "cuda" else "eager"
    if mode == "graphs" and device.type != "cuda":
        return "eager"
    return mode


def graph_batch_size(n: int, sizes: tuple[int, ...] = GRAPH_BATCH_SIZES) -> int | None:
    """The smallest captured batch size that holds n rows (None: more rows than any graph)."""
    return next((s for s in sizes if s >= n), None)


class StaticDecoder:
    """Runs decode steps of `model` in a static mode, or says it cannot (then the engine runs
    the model's forward). Keeps what each shape needs: a compiled function, or CUDA graphs."""

    def __init__(self, model: nn.Module, mode: str):
        self.model, self.mode = model, mode
        self.first_call_s: dict[tuple, float] = {}  # compile or capture time, by shape
        self.failed = False
        self._runners: dict[tuple, _Compiled | _Graph] = {}

    def step(self, tokens: torch.Tensor, cache, n: int) -> torch.Tensor | None:
        """Logits (n, 1, vocab) for tokens (n, 1) appended to rows 0..n-1 of `cache` (the batch's
        whole cache), advancing their lengths; None when this step must run eagerly (the caller
        then runs the model). Rows are padded to a size of GRAPH_BATCH_SIZES with free rows
        (the engine decodes rows 0..n-1, n one past the last busy row, so rows n.. are free):
        they compute at position 0 of their own row, which is forgotten anyway."""
        size = graph_batch_size(n)
        if self.failed or self.mode == "eager" or size is None or size > cache.k.shape[1]:
            return None
        key = (size, cache.k.data_ptr(), cache.max_len)
        try:
            runner = self._runners.pop(key, None)
            if runner is None:
                start = time.perf_counter()
                make = _Compiled if self.mode == "compile" else _Graph
                runner = make(self.model, cache.rows(0, size), tokens.device)
                # the first one per shape compiles; later caches of that shape reuse its code
                self.first_call_s.setdefault((size, cache.max_len), time.perf_counter() - start)
            self._runners[key] = runner  # most recently used last
            while len(self._runners) > MAX_RUNNERS:  # each holds its cache: let old ones go
                self._runners.pop(next(iter(self._runners)))
            logits = runner.run(tokens, cache.lengths, n)
        except Exception as e:  # any compiler or capture error: one line, then eager for good
            self.failed = True
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"shoshin: {self.mode} decode failed, decoding eagerly: {first}", file=sys.stderr)
            return None
        cache.lengths[:n] += 1
        return logits


class _Compiled:
    """The static step through torch.compile for rows 0..size-1 of one cache. Compiling happens
    at the first run (here, in __init__, so that its time is reported as first-call latency)."""

    def __init__(self, model: nn.Module, view, device: torch.device):
        # dynamic=False: one specialisation per (rows, cache length), nothing symbolic
        self.fn = torch.compile(model.decode_static, dynamic=False, fullgraph=True)
        self.view, self.size = view, view.k.shape[1]
        self.tokens = torch.zeros(self.size, 1, dtype=torch.long, device=device)
        self.starts = torch.zeros(self.size, dtype=torch.long, device=device)
        # compile on a copy of the cache rows: the first call must not write into live rows
        saved_k, saved_v = view.k.clone(), view.v.clone()
        self.fn(self.tokens, view, self.starts)
        view.k.copy_(saved_k)
        view.v.copy_(saved_v)

    def run(self, tokens: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
        self.tokens[:n].copy_(tokens)
        self.starts.zero_()
        self.starts[:n].copy_(lengths[:n])
        return self.fn(self.tokens, self.view, self.starts)[:n]


class _Graph:
    """One CUDA graph of a static decode step over rows 0..size-1 of one cache (the graph holds
    the cache's memory addresses, so it is only replayed on that cache)."""

    def __init__(self, model: nn.Module, view, device: torch.device):
        size = view.k.shape[1]
        self.tokens = torch.zeros(size, 1, dtype=torch.long, device=device)
        self.starts = torch.zeros(size, dtype=torch.long, device=device)
        saved_k, saved_v = view.k.clone(), view.v.clone()  # warm-up and capture write into them
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph: allocations, kernel choice
            for _ in range(2):
                model.decode_static(self.tokens, view, self.starts)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model.decode_static(self.tokens, view, self.starts)
        view.k.copy_(saved_k)
        view.v.copy_(saved_v)

    def run(self, tokens: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
        self.tokens[:n].copy_(tokens)
        self.starts.zero_()
        self.starts[:n].copy_(lengths[:n], non_blocking=True)
        self.graph.replay()
        return self.logits[:n]
