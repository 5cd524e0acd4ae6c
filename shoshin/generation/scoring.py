"""Held-out scores with no harness: how well a model predicts the validation conversations (or texts).

Each document is scored whole, from the start (after `<|endoftext|>`, as in training), so a token
sees as much of its own conversation as the window holds; a document longer than the window is
scored in overlapping pieces in which every token keeps at least half a window of context. The
scoring pass is the engine's (`Engine.run` with `max_new_tokens=0` and prompt log-probabilities),
the same that `/v1/completions` answers with `echo`.

For a chat model the numbers are per role: the assistant's (its words and the `<|end|>` that ends
them, the tokens an assistant-only loss trains on) are the headline; the user's and the system's
say how well the model knows its interlocutor. Bits per byte divide by the UTF-8 bytes of the text,
not by tokens, so models with different tokenizers compare fairly. The loss of the first token of
each reply (how to begin: the hard part) is reported apart from the rest of the reply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.nn as nn

from shoshin.data.chat import ROLE_TOKENS, is_chat_tokenizer, render_chat
from shoshin.data.tokenizers import END, EOT, Tokenizer
from shoshin.errors import ShoshinError
from shoshin.generation.engine import Engine
from shoshin.generation.params import SamplingParams
from shoshin.runs.store import Run
from shoshin.storage.checkpoint import read_index
from shoshin.storage.evaluations import EvalRecord, write_record

# Scored by default (the first validation documents up to both limits): seconds on a CPU for a
# small model, so that training can end with them.
MAX_DOCUMENTS = 200
MAX_TOKENS = 32_768
Log = Callable[[str], None]
LOGIT_BUDGET = 2**25  # floats of logits one scoring pass may hold (rows x tokens x vocabulary)

Document = list[dict[str, str]] | str  # a conversation (messages) or a text


def documents_from_tokens(
    tokenizer: Tokenizer,
    tokens: Sequence[int] | np.ndarray,
    limit: int | None = MAX_DOCUMENTS,
    max_tokens: int | None = MAX_TOKENS,
) -> list[Document]:
    """The documents of a tokenized split, as shoshin.data.dataset writes them (each followed by
    `<|endoftext|>`): conversations as lists of messages, texts as strings. The first `limit`
    documents, fewer where they would hold more than `max_tokens` tokens (never fewer than one)."""
    specials = tokenizer.special_tokens
    if EOT not in specials:
        raise ShoshinError(
            "this tokenizer has no <|endoftext|>, so its documents cannot be told apart"
        )
    tokens = np.asarray(tokens)
    ends = np.flatnonzero(tokens == specials[EOT])
    roles = {specials[t]: role for role, t in ROLE_TOKENS.items() if t in specials}
    end = specials.get(END)
    docs: list[Document] = []
    start = 0
    for stop in ends.tolist():
        if limit is not None and len(docs) >= limit:
            break
        if max_tokens is not None and docs and stop > max_tokens:
            break
        segment = tokens[start:stop].tolist()
        start = stop + 1
        if not segment:
            continue
        if segment[0] in roles:
            docs.append(_messages(tokenizer, segment, roles, end))
        else:
            docs.append(tokenizer.decode(segment))
    return docs


def _messages(tokenizer: Tokenizer, ids: list[int], roles: dict[int, str], end: int | None):
    messages, role, content = [], None, []
    for token in ids:
        if token in roles:
            role, content = roles[token], []
        elif token == end and role is not None:
            messages.append({"role": role, "content": tokenizer.decode(content)})
            role = None
        elif role is not None:
            content.append(token)
    return messages


@dataclass
class Span:
    """Targets [start, stop) of a rendered document that belong to one message (or one text)."""

    role: str
    start: int
    stop: int
    bytes: int


def render_document(tokenizer: Tokenizer, doc: Document) -> tuple[list[int], list[Span]]:
    """Token ids of a document as the model was trained on it, and which targets belong to whom.

    A message's targets are its words and its `<|end|>`; its role token, which says who speaks next,
    belongs to no role. A text's targets are all its tokens and the `<|endoftext|>` after it.
    """
    eot = tokenizer.special_tokens.get(EOT)
    ids: list[int] = [eot] if eot is not None else []
    spans: list[Span] = []
    if isinstance(doc, str):
        ids += tokenizer.encode(doc) + ([eot] if eot is not None else [])
        return ids, [Span("text", 1, len(ids), len(doc.encode("utf-8")))]
    if not is_chat_tokenizer(tokenizer):
        raise ShoshinError(
            "these are conversations, but the model has no chat role tokens "
            "(<|user|>, <|assistant|>, <|end|>); score it on text, or use a model trained on chat"
        )
    for message in doc:
        piece = render_chat(tokenizer, [message])[0]
        start = len(ids)
        ids += piece
        spans.append(Span(message["role"], start + 1, len(ids), len(message["content"].encode())))
    return ids, spans


def token_logprobs(engine: Engine, sequences: Sequence[list[int]]) -> list[list[float | None]]:
    """log p(ids[t] | ids[:t]) for every position of every sequence (None where nothing precedes).

    A sequence longer than the model's window is cut into pieces of one window that overlap by
    half a window; each piece scores only its tokens past the previous piece, so every token is
    scored once, with at least half a window of context. Pieces are scored in batches.
    """
    window = engine.window
    pieces: list[tuple[int, int, int, int]] = []  # (sequence, start, stop, first target)
    for i, ids in enumerate(sequences):
        if window is None or len(ids) <= window:
            pieces.append((i, 0, len(ids), 1))
            continue
        keep, start, done = window // 2, 0, 1
        while done < len(ids):
            stop = min(start + window, len(ids))
            pieces.append((i, start, stop, done))
            done, start = stop, stop - keep
    out: list[list[float | None]] = [[None] * len(ids) for ids in sequences]
    order = sorted(pieces, key=lambda p: p[2] - p[1], reverse=True)  # similar lengths share a pass
    params = SamplingParams(max_new_tokens=0, prompt_logprobs=0)
    at = 0
    while at < len(order):
        longest = order[at][2] - order[at][1]
        rows = max(1, min(64, LOGIT_BUDGET // max(1, longest * engine.vocab_size)))
        batch = order[at : at + rows]
        at += rows
        generations = [engine.generation(sequences[i][a:b], params) for i, a, b, _ in batch]
        for _ in engine.run(generations):
            pass
        for (i, a, b, first), g in zip(batch, generations, strict=True):
            for t in range(max(first, a + 1), b):
                out[i][t] = g.prompt_logprobs[t - a].logprob
    return out


@dataclass
class Tally:
    """Negative log-likelihood (nats) summed over some tokens, and the bytes of text they spell."""

    nll: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def summary(self) -> dict[str, float | int | None]:
        loss = self.nll / self.tokens if self.tokens else None
        return {
            "loss": loss,
            "ppl": None if loss is None else math.exp(min(loss, 50.0)),
            "bits_per_byte": self.nll / math.log(2) / self.bytes if self.bytes else None,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


@dataclass
class HeldOutScores:
    """What `score_documents` measured. `replies[d]` holds the log-likelihood (nats) of every
    assistant message of document d, in order: the same replies, scored by two models, are
    compared one by one in a pairwise evaluation."""

    kind: str  # chat | text
    documents: int
    roles: dict[str, Tally] = field(default_factory=dict)
    first_reply_token: Tally = field(default_factory=Tally)
    later_reply_tokens: Tally = field(default_factory=Tally)
    replies: list[list[float]] = field(default_factory=list)
    # (nll, tokens, bytes) of the headline role in each document: for standard errors
    per_document: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def headline(self) -> Tally:
        """The assistant's tokens for chat (what an assistant-only loss trains on), else all text."""
        return self.roles.get("assistant" if self.kind == "chat" else "text", Tally())

    def metrics(self) -> dict[str, float]:
        """Flat headline numbers (what show, compare and the leaderboards list)."""
        head = self.headline.summary()
        out = {k: head[k] for k in ("loss", "ppl", "bits_per_byte")}
        for role, tally in self.roles.items():
            if role not in ("assistant", "text"):
                out[f"{role}_loss"] = tally.summary()["loss"]
        if self.kind == "chat":
            out["first_token_loss"] = self.first_reply_token.summary()["loss"]
            out["later_tokens_loss"] = self.later_reply_tokens.summary()["loss"]
        return {k: v for k, v in out.items() if v is not None}

    def standard_errors(self) -> dict[str, float]:
        """Bootstrap standard errors of the headline loss and bits per byte, resampling whole
        documents (tokens of one conversation are not independent draws)."""
        from shoshin.stats import bootstrap

        docs = [d for d in self.per_document if d[1]]
        if len(docs) < 2:
            return {}
        nll, tokens, nbytes = ([d[i] for d in docs] for i in range(3))
        loss = bootstrap([nll, tokens], lambda n, t: n.sum() / t.sum())
        out = {"loss": loss.se}
        if all(nbytes):
            bits = bootstrap([nll, nbytes], lambda n, b: n.sum() / b.sum() / math.log(2))
            out["bits_per_byte"] = bits.se
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "documents": self.documents,
            "metrics": self.metrics(),
            "roles": {role: tally.summary() for role, tally in self.roles.items()},
            "first_reply_token": self.first_reply_token.summary(),
            "later_reply_tokens": self.later_reply_tokens.summary(),
        }


def score_documents(
    model: nn.Module, tokenizer: Tokenizer, documents: Sequence[Document]
) -> HeldOutScores:
    """Score documents (all conversations or all texts) with the model; see the module docstring."""
    if not documents:
        raise ShoshinError("there are no documents to score")
    kinds = {isinstance(d, str) for d in documents}
    if len(kinds) > 1:
        raise ShoshinError("the documents mix conversations and plain texts; score one kind")
    rendered = [render_document(tokenizer, d) for d in documents]
    logprobs = token_logprobs(Engine(model), [ids for ids, _ in rendered])
    scores = HeldOutScores("text" if kinds == {True} else "chat", len(documents))
    headline = "assistant" if scores.kind == "chat" else "text"
    for (_, spans), lps in zip(rendered, logprobs, strict=True):
        scores.replies.append([])
        doc = [0.0, 0, 0]
        for span in spans:
            tally = scores.roles.setdefault(span.role, Tally())
            nll = [-lps[t] for t in range(span.start, span.stop)]
            tally.nll += sum(nll)
            tally.tokens += len(nll)
            tally.bytes += span.bytes
            if span.role == headline:
                doc = [doc[0] + sum(nll), doc[1] + len(nll), doc[2] + span.bytes]
            if span.role == "assistant":
                scores.replies[-1].append(-sum(nll))
                scores.first_reply_token.nll += nll[0]
                scores.first_reply_token.tokens += 1
                scores.later_reply_tokens.nll += sum(nll[1:])
                scores.later_reply_tokens.tokens += len(nll) - 1
        scores.per_document.append((doc[0], doc[1], doc[2]))
    return scores


# -- records and reports of held-out scores ------------------------------------------------


def heldout_record(
    scores: HeldOutScores,
    source: str,
    checkpoint: str | None,
    command: Sequence[str],
    errors: dict[str, float] | None = None,
) -> EvalRecord:
    return EvalRecord(
        name="heldout",
        kind="heldout",
        metrics=scores.metrics(),
        checkpoint=checkpoint,
        command=list(command),
        details={"data": source, **scores.to_dict(), "standard_errors": errors or {}},
    )


def format_heldout(
    scores: HeldOutScores, source: str, errors: dict[str, float] | None = None
) -> str:
    """The held-out scores as a few lines of text (with `errors`: their standard errors)."""
    lines = [f"held-out: {source}"]
    rows = [["role", "loss", "ppl", "bits/byte", "tokens"]]
    for role, tally in sorted(scores.roles.items()):
        s = tally.summary()
        rows.append(
            [role, *(f"{s[k]:.4f}" if s[k] is not None else "-" for k in ("loss", "ppl", "bits_per_byte")),
             str(s["tokens"])]
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    if scores.kind == "chat":
        first, later = scores.first_reply_token.summary(), scores.later_reply_tokens.summary()
        if first["loss"] is not None:
            later_text = f"{later['loss']:.4f}" if later["loss"] is not None else "-"
            lines.append(
                f"  reply tokens: first {first['loss']:.4f}, later {later_text} (loss per token)"
            )
    if errors:
        parts = ", ".join(f"{k.replace('_', ' ')} ± {v:.4f}" for k, v in errors.items())
        lines.append(
            f"  standard errors ({scores.kind == 'chat' and 'assistant' or 'text'}; bootstrap "
            f"over the {len(scores.per_document)} documents): {parts}"
        )
    return "\n".join(lines)


def heldout_at_end_of_training(model: nn.Module, data: Any, run: Run, log: Log = print) -> None:
    """Score the first validation documents with the trained model, record `eval/heldout.json`
    and log the numbers (the trainer's one call; `shoshin eval RUN` gives the same numbers)."""
    try:
        docs = documents_from_tokens(data.tokenizer, data.val.tokens)
        scores = score_documents(model, data.tokenizer, docs)
    except ShoshinError as exc:
        log(f"held-out scores skipped: {exc}")
        return
    source = f"{len(docs)} validation documents of {run.config.data.source}"
    checkpoint = read_index(run.path / "checkpoints").get("latest")
    path = write_record(run.path, heldout_record(scores, source, checkpoint, ["train"]))
    log(format_heldout(scores, source))
    if run.mirror is not None:  # training's own MLflow run is still open
        row = {f"eval.heldout.{k}": v for k, v in scores.metrics().items()}
        run.mirror.log_metrics({"step": int(checkpoint.split("-")[1]) if checkpoint else 0, **row})
        run.mirror.log_artifact(path, "eval")
