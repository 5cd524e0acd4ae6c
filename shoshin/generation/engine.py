"""The inference engine: token ids in, token ids out; it knows nothing of text.

One decode loop serves everything that generates: `shoshin.generate`, `shoshin sample`, `shoshin
chat`, the Python `Engine` API and the server's continuous batching. Its state is a `Batch`: the
rows of one KV cache (GPT) or carried (h, c) state (LSTM), each row holding a `Generation` with its
own length, sampling parameters, history and `torch.Generator`, so that a row's tokens never depend
on the other rows. Generations join a batch at a step boundary (`Batch.add`: their prompts are
prefilled, several in one padded pass where the model declares that safe), and every step samples
one token for each row at once (`Batch.sample`) and feeds them through one forward pass
(`Batch.advance`). The naive reference (`sampling.naive_generate`) re-runs the whole prefix
instead; tests hold this engine, and the server built on it, to it token for token.

The full-window rule, the same for every surface. A GPT's learned positions stop at its
`context_window`, so its window cannot slide one token at a time without recomputing everything.
When the next token would not fit, the row keeps its most recent `overflow_keep` tokens (default:
half a window), its cache row is emptied and refilled with them, and generation carries on; a
prompt longer than the window is cut to its last `context_window` tokens. Generation therefore never
fails for length and ends only at a stop or at `max_new_tokens`; after an overflow the model sees
between half a window and a whole window of the most recent text. (The naive path slides by one
token: both agree until the window is first full; `overflow_keep=context_window` gives exactly the
naive sliding window, at the naive path's cost.) A recurrent model has no window and never
overflows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from shoshin.errors import ShoshinError
from shoshin.generation.params import SamplingParams
from shoshin.generation.sampling import (
    TokenHistory,
    ends_with_stop,
    make_generator,
    sample_next,
)


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (raw logits, before any sampling option) and the
    most likely tokens at its position, best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Generation:
    """One sequence being generated: prompt, parameters, generator, and what came out so far.

    After the batch is done with it: `tokens` (new ids, a stop token included), `finish_reason`
    ("stop": a stop token or sequence; "length": max_new_tokens), `logprobs` (one TokenLogprob per
    new token when params.logprobs is set) and `prompt_logprobs` (None for the first prompt token,
    then one per prompt token, when params.prompt_logprobs is set).
    """

    def __init__(self, prompt: Sequence[int], params: SamplingParams):
        if len(prompt) == 0:
            raise ValueError("every prompt must hold at least one token")
        self.prompt = list(prompt)
        self.params = params
        self.history = TokenHistory(list(prompt), len(prompt))
        self.generator = make_generator(params.seed)
        self.stop_ids = set(params.stop_ids)
        self.logprobs: list[TokenLogprob] = []
        self.prompt_logprobs: list[TokenLogprob | None] = []
        self.finish_reason: str | None = None
        self.logits: torch.Tensor | None = None  # (vocab,): the next token's, once prefilled
        self.constraint = None  # a generation.constraints.RowConstraint when params.grammar is set

    @property
    def tokens(self) -> list[int]:
        return self.history.generated

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Batch:
    """Rows of one cache, each free or holding a Generation; the one decode loop's state.

    A step is `sample()` (every prefilled row picks its next token; finished rows are released)
    then `advance()` (the new tokens of the rows still going are fed through one forward pass).
    Tokens are fed lazily: the newest token of a row is never in its cache until `advance`, so a
    caller that stops after `sample` loses nothing.
    """

    def __init__(self, engine: Engine, cache):
        self.engine, self.model, self.cache = engine, engine.model, cache
        self.rows: list[Generation | None] = [None] * cache.lengths.numel()

    @property
    def active(self) -> int:
        """Rows holding an unfinished generation."""
        return sum(g is not None for g in self.rows)

    def free_rows(self) -> list[int]:
        return [b for b, g in enumerate(self.rows) if g is None]

    def release(self, b: int, reset: bool = True) -> None:
        """Free row b (reset=False keeps its cache: a chat goes on from it)."""
        self.rows[b] = None
        if reset:
            self.cache.reset(b)

    @torch.no_grad()
    def add(self, joining: dict[int, Generation], cached: bool = False) -> None:
        """Prefill the prompts of new generations into the given free rows (between a step's
        `advance` and the next `sample`).

        With cached=True a row's cache may already hold the beginning of its prompt (a conversation
        so far): only the rest is run; otherwise the rows start empty. Rows next to each other
        share one forward pass when the model declares right padding safe (then also when the
        prompts differ in length) or when the prompts are equally long.
        """
        group: list[int] = []
        for b in sorted(joining):
            if self.rows[b] is not None:
                raise ValueError(f"row {b} is busy")
            self.rows[b] = joining[b]
            if not cached:
                self.cache.reset(b)
            self._fit_prompt(b)
            if group and not self._can_share(group, b):
                self._prefill(group)
                group = []
            group.append(b)
        if group:
            self._prefill(group)

    @torch.no_grad()
    def sample(self) -> list[tuple[int, int]]:
        """Every prefilled row picks its next token; returns (row, token) for each new token.

        Rows that reach a stop or their max_new_tokens are finished and released; their cache rows
        keep what they held until a new generation takes them.
        """
        ready = [b for b, g in enumerate(self.rows) if g is not None and g.logits is not None]
        for b in [b for b in ready if self.rows[b].params.max_new_tokens == 0]:
            self._finish(b, "length")  # a scoring pass: the prompt's log-probabilities only
        ready = [b for b in ready if self.rows[b] is not None]
        if not ready:
            return []
        gens = [self.rows[b] for b in ready]
        logits = torch.stack([g.logits for g in gens])  # (R, vocab)
        tokens = sample_next(
            logits,
            [g.params for g in gens],
            [g.history for g in gens],
            [g.generator for g in gens],
            self._allowed(gens),
        ).tolist()
        want = [i for i, g in enumerate(gens) if g.params.logprobs is not None]
        if want:
            logprobs = logits[want].float().log_softmax(dim=-1)
            for j, i in enumerate(want):
                gens[i].logprobs.append(
                    _token_logprob(logprobs[j], tokens[i], gens[i].params.logprobs)
                )
        out = []
        for b, g, token in zip(ready, gens, tokens, strict=True):
            g.history.ids.append(token)
            g.logits = None
            out.append((b, token))
            if g.constraint is not None:
                g.constraint.advance(token)
            if ends_with_stop(g.tokens, g.stop_ids, g.params.stop_sequences):
                self._finish(b, "stop")
            elif g.constraint is not None and g.constraint.done:
                self._finish(b, "stop")  # the grammar is complete and allows nothing more
            elif len(g.tokens) >= g.params.max_new_tokens:
                self._finish(b, "length")
        return out

    @torch.no_grad()
    def advance(self) -> None:
        """Feed the newest token of every row still generating through one forward pass (after
        `sample`, which leaves no row waiting to be sampled).

        Only rows 0..n-1 are decoded, n being one past the last busy row (rows are taken lowest
        first); a free row among them reads a dummy token and is forgotten again.
        """
        busy = [b for b, g in enumerate(self.rows) if g is not None and g.logits is None]
        if not busy:
            return
        n = busy[-1] + 1
        ids, window, lengths = [0] * n, self.cache.max_len, self.cache.lengths.tolist()
        for b in range(n):  # plain Python per row: no tensor operation per row
            g = self.rows[b]
            if g is None:
                self.cache.reset(b)
            else:
                ids[b] = g.history.ids[-1]
                if window is not None and lengths[b] >= window:
                    self._refill(b)
        tokens = torch.tensor(ids, dtype=torch.long).view(n, 1).to(self.engine.device)
        logits = self.model(tokens, cache=self.cache.rows(0, n))[:, -1, :]  # (n, vocab)
        for b in range(n):
            if self.rows[b] is None:
                self.cache.reset(b)
            else:
                self.rows[b].logits = logits[b]

    def _allowed(self, gens: list[Generation]) -> torch.Tensor | None:
        """The (rows, vocab) mask of the tokens the rows' grammars allow (None: no grammar)."""
        if self.engine.constraints is None:
            return None
        return self.engine.constraints.allowed([g.constraint for g in gens])

    def _finish(self, b: int, reason: str) -> None:
        self.rows[b].finish_reason = reason
        self.release(b, reset=False)

    def _fit_prompt(self, b: int) -> None:
        """A prompt longer than the window keeps its end (positions cannot slide any further)."""
        g, window = self.rows[b], self.cache.max_len
        if window is not None and len(g.history.ids) > window:
            g.history = TokenHistory(g.history.ids[-window:], window)
            g.prompt = g.history.ids[:]
            self.cache.reset(b)  # what the cache held no longer matches these positions

    def _cached(self, b: int) -> int:
        """Prompt tokens row b's cache already holds (one fewer if it holds them all: the last one
        is run again to get its logits)."""
        held = int(self.cache.lengths[b])
        prompt = len(self.rows[b].history.ids)
        if held >= prompt:
            if self.engine.window is None:
                raise ValueError("the recurrent state already holds the whole prompt; reset it")
            self.cache.lengths[b] = held = prompt - 1
        if self.rows[b].params.prompt_logprobs is not None and held:
            raise ValueError("prompt log-probabilities need an empty cache row")
        return held

    def _can_share(self, group: list[int], b: int) -> bool:
        if b != group[-1] + 1:
            return False
        rest = [len(self.rows[r].history.ids) - self._cached(r) for r in (*group, b)]
        if self.model.right_padding_safe:
            window = self.cache.max_len
            start = max(int(self.cache.lengths[r]) for r in (*group, b))
            return window is None or start + max(rest) <= window
        return len(set(rest)) == 1 and len({int(self.cache.lengths[r]) for r in (*group, b)}) == 1

    def _prefill(self, rows: list[int]) -> None:
        """One forward pass over the uncached prompt tokens of consecutive rows, padded on the right."""
        starts = [self._cached(b) for b in rows]
        rests = [self.rows[b].history.ids[s:] for b, s in zip(rows, starts, strict=True)]
        T = max(len(r) for r in rests)
        ids = torch.zeros(len(rows), T, dtype=torch.long, device=self.engine.device)
        for i, rest in enumerate(rests):
            ids[i, : len(rest)] = torch.tensor(rest, dtype=torch.long)
        last = torch.tensor([len(r) - 1 for r in rests])
        view = self.cache.rows(rows[0], rows[-1] + 1)
        if any(self.rows[b].params.prompt_logprobs is not None for b in rows):
            logits = self.model(ids, cache=view)  # (n, T, vocab)
        else:  # only the last prompt position is sampled: project only it onto the vocabulary
            logits = self.model(ids, cache=view, logits_at=last)  # (n, 1, vocab)
            last = torch.zeros_like(last)
        for i, (b, start, rest) in enumerate(zip(rows, starts, rests, strict=True)):
            self.cache.lengths[b] = start + len(rest)  # forget the padding
            g = self.rows[b]
            g.logits = logits[i, int(last[i])]
            if g.params.prompt_logprobs is not None:
                g.prompt_logprobs = [None] + _logprobs_of(
                    logits[i, : len(rest) - 1], rest[1:], g.params.prompt_logprobs
                )

    def _refill(self, b: int) -> None:
        """Row b's window is full: keep its last `overflow_keep` tokens (the newest is fed next)."""
        self.cache.reset(b)
        ids = self.rows[b].history.ids
        kept = ids[-min(self.engine.keep, self.cache.max_len) : -1]
        if kept:
            x = torch.tensor([kept], dtype=torch.long, device=self.engine.device)
            self.model(x, cache=self.cache.row(b), logits_at=torch.tensor([len(kept) - 1]))


def _token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """TokenLogprob of `token` from one position's log-probabilities (vocab,)."""
    best = torch.topk(logprobs, top) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if top else []
    return TokenLogprob(token, float(logprobs[token]), pairs)


def _logprobs_of(logits: torch.Tensor, targets: Sequence[int], top: int) -> list[TokenLogprob]:
    """TokenLogprob of each target given the logits (T, vocab) of the positions before it."""
    logprobs = logits.float().log_softmax(dim=-1)
    return [_token_logprob(logprobs[t], tok, top) for t, tok in enumerate(targets)]


class Engine:
    """Generates from a model on token ids: prefill once, then one token per row per step.

    The model declares what generation needs to know: `context_window` (its position limit, or
    None for a recurrent model) and `right_padding_safe`. `constraints` (a
    generation.constraints.Constraints of the model's vocabulary) lets generations carry a grammar.
    """

    def __init__(self, model: nn.Module, overflow_keep: int | None = None, constraints=None):
        self.model = model
        self.constraints = constraints
        self.window: int | None = model.context_window
        self.keep = 0
        if self.window is not None:
            keep = overflow_keep if overflow_keep is not None else max(1, self.window // 2)
            if not 1 <= keep <= self.window:
                raise ValueError(f"overflow_keep must be in [1, {self.window}], got {keep}")
            self.keep = keep
        self.device = next(model.parameters()).device
        self.vocab_size: int = model.config.vocab_size

    def new_cache(self, batch_size: int = 1, max_len: int | None = None):
        """An empty cache for `batch_size` rows, as large as the model's window (or max_len)."""
        return self.model.new_cache(batch_size, max_len)

    def new_batch(self, rows: int, max_len: int | None = None, cache=None) -> Batch:
        """A Batch of `rows` free rows on a new cache (or on `cache`, e.g. a conversation's)."""
        return Batch(self, cache if cache is not None else self.new_cache(rows, max_len))

    def generation(self, prompt: Sequence[int], params: SamplingParams) -> Generation:
        """A Generation of `prompt` ready to join a batch (its parameters checked, its grammar
        compiled: a grammar that cannot be enforced is a ShoshinError)."""
        generation = Generation(prompt, params.validate(self.vocab_size))
        if params.grammar is not None:
            if self.constraints is None:
                raise ShoshinError(
                    "this engine was made without a vocabulary for grammars; "
                    "pass Engine(model, constraints=Constraints(tokenizer))"
                )
            generation.constraint = self.constraints.start(params.grammar, params.stop_ids)
        return generation

    def run(self, generations: Sequence[Generation], cache=None) -> Iterator[list[int | None]]:
        """Generate every generation to its end, one row each; yield each step's new tokens (None for
        rows already finished). The generations then hold their tokens, log-probabilities and
        finish reasons. `cache` (one row per generation) may hold the start of their prompts."""
        fresh = cache is None
        if fresh:  # as long as this generation needs (zeroing a whole window costs)
            need = max(len(g.prompt) + g.params.max_new_tokens for g in generations)
            cache = self.new_cache(len(generations), need)
        batch = self.new_batch(len(generations), cache=cache)
        was_training = self.model.training
        self.model.eval()
        try:
            batch.add(dict(enumerate(generations)), cached=not fresh)
            while batch.active:
                step: list[int | None] = [None] * len(generations)
                for b, token in batch.sample():
                    step[b] = token
                yield step
                batch.advance()
        finally:
            self.model.train(was_training)

    def complete(
        self, prompt_ids: Sequence[int], params: SamplingParams | None = None, cache=None
    ) -> Generation:
        """The finished Generation continuing prompt_ids: tokens, log-probabilities, finish reason."""
        generation = self.generation(prompt_ids, params or SamplingParams())
        for _ in self.run([generation], cache):
            pass
        return generation

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams | None = None, cache=None
    ) -> list[int]:
        """The new token ids continuing prompt_ids (a stop token included)."""
        return self.complete(prompt_ids, params, cache).tokens

    def stream(
        self, prompt_ids: Sequence[int], params: SamplingParams | None = None, cache=None
    ) -> Iterator[int]:
        """Yield new token ids one by one as they are produced.

        `cache` (batch 1) may already hold the first cache.lengths[0] tokens of prompt_ids, e.g. a
        conversation so far: only the rest is prefilled. The last token yielded is never in the
        cache, so a caller that stops early loses nothing.
        """
        generation = self.generation(prompt_ids, params or SamplingParams())
        for (token,) in self.run([generation], cache):
            if token is not None:
                yield token

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[list[int]]:
        """New token ids for several prompts (of any lengths) at once; one list per prompt.

        Each prompt has its own parameters (one SamplingParams for all, or one each) and generator.
        """
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
        generations = [self.generation(p, sp) for p, sp in zip(prompts, params, strict=True)]
        for _ in self.run(generations):
            pass
        return [g.tokens for g in generations]

    def score(self, ids: Sequence[int], top: int = 0) -> list[TokenLogprob | None]:
        """The log-probability of every token of `ids` given the ones before it (None for the
        first), with the `top` most likely alternatives at each position: a scoring pass, nothing
        generated. A text longer than a model's window is an error (its positions would not fit)."""
        if self.window is not None and len(ids) > self.window:
            raise ValueError(f"{len(ids)} tokens do not fit in the window of {self.window}")
        params = SamplingParams(max_new_tokens=0, prompt_logprobs=top)
        return self.complete(ids, params).prompt_logprobs


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int | None = None,
    use_cache: bool = True,
    params: SamplingParams | None = None,
    **options,
) -> list[int]:
    """New token ids continuing `prompt_ids` (a stop token included).

    Sampling options are SamplingParams fields, given as `params` and/or as keywords:
    `shoshin.generate(model, ids, 100, temperature=0.8, top_k=40, seed=0)`.
    use_cache=True runs the Engine (KV cache / carried state); use_cache=False runs the naive
    reference, which re-runs the whole prefix at every step.
    """
    from shoshin.generation.sampling import naive_generate

    if max_new_tokens is not None:
        options["max_new_tokens"] = max_new_tokens
    params = replace(params or SamplingParams(), **options)
    if not use_cache:
        return naive_generate(model, prompt_ids, params)
    return Engine(model).generate(prompt_ids, params)
