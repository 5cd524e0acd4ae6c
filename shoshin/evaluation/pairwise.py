"""Two chatbots on the same held-out conversations, with no judge model.

- Which model gives each reference reply (what the human actually answered) the higher likelihood:
  the log-probability of the same text under two models is comparable whatever their tokenizers,
  so "A wins" on a reply means A found the human's answer more likely. The share of replies a
  model wins is its win rate (ties count half).
- Both models' own replies to the same prompts, side by side, written as Markdown for a person
  to read: the same sampling settings and the same seed per prompt for both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch.nn as nn

from shoshin.data.tokenizers import Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.conversation import ChatSession
from shoshin.generation.engine import Engine
from shoshin.generation.params import SamplingParams
from shoshin.generation.scoring import HeldOutScores, score_documents
from shoshin.stats import Interval, bootstrap

PROMPTS = 20  # conversations whose first reply both models write, by default
TIE = 1e-6  # log-likelihoods (nats) closer than this are a tie


@dataclass
class Contestant:
    """One side of the comparison: a model, its tokenizer and the name to show."""

    name: str
    model: nn.Module
    tokenizer: Tokenizer


@dataclass
class Exchange:
    """One prompt: the conversation so far, the reference reply and each model's reply."""

    history: list[dict[str, str]]
    reference: str
    replies: tuple[str, str]
    loglik: tuple[float, float]  # of the reference reply under each model


@dataclass
class PairwiseResult:
    names: tuple[str, str]
    wins: int
    losses: int
    ties: int
    scores: tuple[HeldOutScores, HeldOutScores]
    params: SamplingParams
    exchanges: list[Exchange] = field(default_factory=list)
    # per conversation with assistant replies: each model's bits on them, their bytes, the
    # first model's wins (ties half) and the replies: what the intervals resample
    paired: dict[str, list[float]] = field(default_factory=dict)
    bits_saved: Interval | None = None  # bits per byte the first model saves, 95% interval
    win_interval: Interval | None = None  # the win rate with its 95% interval

    @property
    def replies(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        """The first model's share of reference replies it finds more likely (ties count half)."""
        return (self.wins + 0.5 * self.ties) / self.replies if self.replies else math.nan

    def metrics(self) -> dict[str, float]:
        a, b = (s.metrics() for s in self.scores)
        return {
            "win_rate": self.win_rate,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "replies": self.replies,
            # bits per byte the first model saves on the held-out replies (positive: it is better)
            **({"bits_per_byte_saved": b["bits_per_byte"] - a["bits_per_byte"]}
               if "bits_per_byte" in a and "bits_per_byte" in b else {}),
        }  # fmt: skip

    def intervals(self) -> dict[str, dict[str, float]]:
        """The paired bootstrap intervals (over conversations) of the headline differences."""
        out = {}
        for key, interval in (
            ("bits_per_byte_saved", self.bits_saved),
            ("win_rate", self.win_interval),
        ):
            if interval is not None:
                out[key] = asdict(interval)
        return out

    def details(self) -> dict[str, Any]:
        return {
            "against": self.names[1],
            "intervals": self.intervals(),
            "per_conversation": self.paired,
            "held_out": {
                name: s.to_dict() for name, s in zip(self.names, self.scores, strict=True)
            },
            "sampling": {
                k: v for k, v in vars(self.params).items() if k not in ("stop_ids", "logit_bias")
            },
            "prompts": len(self.exchanges),
        }


def first_exchanges(
    documents: Sequence[list[dict[str, str]]], limit: int
) -> list[tuple[int, int, list[dict[str, str]]]]:
    """(document, its assistant message number, history) of the first assistant reply of each
    conversation that answers a user message, for the first `limit` conversations with one."""
    out = []
    for d, messages in enumerate(documents):
        replies = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            if i and messages[i - 1]["role"] == "user":
                out.append((d, replies, messages[:i]))
                break
            replies += 1
        if len(out) >= limit:
            break
    return out


def reply_to(side: Contestant, history: list[dict[str, str]], params: SamplingParams) -> str:
    """The model's reply to a conversation that ends with a user message, as `shoshin chat` makes
    it (the same session: chat template, stop tokens, history trimmed to the window)."""
    system = history[0]["content"] if history[0]["role"] == "system" else None
    turns = history[1:] if system is not None else history
    session = ChatSession(Engine(side.model), side.tokenizer, system=system, params=params)
    session.turns = [dict(m) for m in turns[:-1]]
    return session.reply(turns[-1]["content"])


def compare_pair(
    a: Contestant,
    b: Contestant,
    documents: Sequence[list[dict[str, str]]],
    params: SamplingParams,
    prompts: int = PROMPTS,
) -> PairwiseResult:
    """Score both models on `documents` (conversations) and let both answer the first `prompts`."""
    if not documents or any(isinstance(d, str) for d in documents):
        raise ShoshinError("a pairwise comparison needs held-out conversations (chat data)")
    scores = (
        score_documents(a.model, a.tokenizer, documents),
        score_documents(b.model, b.tokenizer, documents),
    )
    wins = losses = ties = 0
    pairs = zip(
        (x for doc in scores[0].replies for x in doc),
        (x for doc in scores[1].replies for x in doc),
        strict=True,
    )
    for la, lb in pairs:
        if abs(la - lb) <= TIE:
            ties += 1
        elif la > lb:
            wins += 1
        else:
            losses += 1
    result = PairwiseResult((a.name, b.name), wins, losses, ties, scores, params)
    paired_intervals(result, documents)
    seed = 0 if params.seed is None else params.seed
    for i, (d, r, history) in enumerate(first_exchanges(documents, prompts)):
        p = replace(params, seed=seed + i)  # the same seed for both models, a new one per prompt
        result.exchanges.append(
            Exchange(
                history,
                documents[d][len(history)]["content"],
                (reply_to(a, history, p), reply_to(b, history, p)),
                (scores[0].replies[d][r], scores[1].replies[d][r]),
            )
        )
    return result


def paired_intervals(result: PairwiseResult, documents: Sequence[list[dict[str, str]]]) -> None:
    """Fill in the per-conversation scores of both models and the bootstrap intervals of the
    bits per byte the first model saves and of its win rate (conversations resampled whole:
    replies within one conversation are not independent)."""
    a_bits, b_bits, nbytes, wins, replies = [], [], [], [], []
    for doc, la, lb in zip(documents, *(s.replies for s in result.scores), strict=True):
        if not la:
            continue
        a_bits.append(-sum(la) / math.log(2))
        b_bits.append(-sum(lb) / math.log(2))
        nbytes.append(sum(len(m["content"].encode()) for m in doc if m["role"] == "assistant"))
        wins.append(sum(1.0 if x - y > TIE else 0.5 if abs(x - y) <= TIE else 0.0
                        for x, y in zip(la, lb, strict=True)))  # fmt: skip
        replies.append(len(la))
    result.paired = {"a_bits": a_bits, "b_bits": b_bits, "bytes": nbytes, "wins": wins,
                     "replies": replies}  # fmt: skip
    if not a_bits:
        return
    if all(nbytes):
        result.bits_saved = bootstrap([a_bits, b_bits, nbytes], bits_saved)
    result.win_interval = bootstrap([wins, replies], lambda w, r: w.sum() / r.sum())


def bits_saved(a_bits, b_bits, nbytes) -> float:
    """Bits per byte the first model saves over the second on these conversations."""
    return (b_bits.sum() - a_bits.sum()) / nbytes.sum()


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines() or ["(empty)"])


def to_markdown(result: PairwiseResult) -> str:
    """The report a person reads: the win rate, the held-out numbers, then every prompt with the
    reference and both replies."""
    a, b = result.names
    sa, sb = (s.metrics() for s in result.scores)
    p = result.params
    lines = [
        f"# {a} vs {b}",
        "",
        f"**Judge-free win rate of {a}: {result.win_rate:.1%}** — of {result.replies} reference "
        f"replies in {result.scores[0].documents} held-out conversations, {a} gives {result.wins} "
        f"the higher likelihood, {b} {result.losses} ({result.ties} ties).",
        "",
        *interval_lines(result),
        "",
        "| held-out (assistant tokens) | " + a + " | " + b + " |",
        "|---|---:|---:|",
    ]
    for key in ("loss", "bits_per_byte", "first_token_loss", "later_tokens_loss", "user_loss"):
        if key in sa or key in sb:
            cells = [f"{m[key]:.4f}" if key in m else "-" for m in (sa, sb)]
            lines.append(f"| {key.replace('_', ' ')} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "Loss is per token of each model's own tokenizer; bits per byte compare across tokenizers.",
        "",
        f"Replies: temperature {p.temperature:g}, top-k {p.top_k or '-'}, top-p {p.top_p or '-'}, "
        f"at most {p.max_new_tokens} tokens; prompt i is sampled with seed {p.seed or 0} + i "
        "for both models.",
        "",
    ]
    for i, ex in enumerate(result.exchanges, start=1):
        lines += [f"## {i}", ""]
        for m in ex.history:
            lines += [f"**{m['role']}**", "", _quote(m["content"]), ""]
        la, lb = ex.loglik
        verdict = "a tie" if abs(la - lb) <= TIE else f"more likely under {a if la > lb else b}"
        lines += [
            f"**reference reply** (log-likelihood {a}: {la:.2f}, {b}: {lb:.2f}; {verdict})",
            "",
            _quote(ex.reference),
            "",
            f"**{a}**",
            "",
            _quote(ex.replies[0]),
            "",
            f"**{b}**",
            "",
            _quote(ex.replies[1]),
            "",
        ]
    return "\n".join(lines)


def interval_lines(result: PairwiseResult) -> list[str]:
    """The paired differences with their 95% intervals, in words (empty without intervals)."""
    a, b = result.names
    n = len(result.paired.get("a_bits", []))
    lines = []
    if result.bits_saved is not None:
        i = result.bits_saved
        sign = "saves" if i.value >= 0 else "costs"
        clear = i.low > 0 or i.high < 0
        lines.append(
            f"{a} {sign} {abs(i.value):.4f} bits per byte against {b} on the same {n} conversations "
            f"(95% paired bootstrap interval [{i.low:+.4f}, {i.high:+.4f}]"
            + (
                "; the interval excludes 0)"
                if clear
                else "; it includes 0: no detectable difference)"
            )
        )
    if result.win_interval is not None:
        w = result.win_interval
        lines.append(f"win rate of {a}: {w.value:.1%} (95% interval {w.low:.1%} to {w.high:.1%})")
    return lines
