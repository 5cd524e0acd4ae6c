"""What grammar-constrained decoding costs: tokens/s with and without a JSON Schema, same model.

Random weights (an untrained model wanders everywhere the grammar allows: the worst case for the
mask), a byte-level BPE vocabulary trained here on the repository's text, batch 1 and 16 through
the engine's one decode loop. The schema is an array of objects (strings, integers, booleans,
enums) that cannot close before N tokens (minItems), so both sides generate exactly N tokens per
row. Sides alternate round by round (a shared machine's load hits both) and each keeps its best.
On a loaded machine the two sides' best rounds can still fall at different loads, so the script
also times, inside the constrained runs, what constraining adds (the masks and telling the grammars
each token): its share of those runs' time is the load-robust figure.

    python benchmarks/constrained.py [--model demo|gpt2] [--tokens 64] [--rounds 3]

`demo`: the README's model (4 layers x 128, vocabulary 2,048); `gpt2`: GPT-2-small-shaped
(12 x 768) with an 8,192 vocabulary. The target (issue 21): constrained costs at most 15% of
tokens/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from shoshin.config import ModelConfig
from shoshin.data.tokenizers import CHAT_TOKENS, EOT, BpeTokenizer
from shoshin.generation import Engine, SamplingParams
from shoshin.generation.constraints import Constraints, json_schema_grammar
from shoshin.models import build_model

ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["cat", "dog", "bird"]},
    },
    "required": ["name", "age", "ok", "kind"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": ITEM, "minItems": 10_000}
MODELS = {
    "demo": dict(n_layer=4, n_head=4, n_embd=128, block_size=256, vocab=2048),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=256, vocab=8192),
}


def build(name: str):
    shape = dict(MODELS[name])
    vocab = shape.pop("vocab")
    root = Path(__file__).resolve().parent.parent
    texts = [p.read_text("utf-8") for p in sorted(root.glob("shoshin/**/*.py"))]
    texts += [p.read_text("utf-8") for p in sorted(root.glob("*.md"))]
    tok = BpeTokenizer.train(texts, vocab, [EOT, *CHAT_TOKENS])
    torch.manual_seed(0)
    config = ModelConfig(arch="gpt", vocab_size=tok.vocab_size, dropout=0.0, **shape)
    model = build_model(config).eval()
    return Engine(model, constraints=Constraints(tok)), tok


class Timed:
    """Seconds spent in the constraint work of the decode loop (masks, advancing grammars)."""

    def __init__(self, engine: Engine):
        self.seconds = 0.0
        constraints = engine.constraints
        allowed = constraints.allowed

        def timed_allowed(rows):
            start = time.perf_counter()
            out = allowed(rows)
            self.seconds += time.perf_counter() - start
            return out

        constraints.allowed = timed_allowed
        from shoshin.generation.constraints import RowConstraint

        advance = RowConstraint.advance

        def timed_advance(row, token):
            start = time.perf_counter()
            advance(row, token)
            self.seconds += time.perf_counter() - start

        RowConstraint.advance = timed_advance


def tokens_per_second(engine: Engine, prompts, params) -> float:
    start = time.perf_counter()
    out = engine.generate_batch(prompts, params)
    spent = time.perf_counter() - start
    assert all(len(o) == params[0].max_new_tokens for o in out)
    return sum(len(o) for o in out) / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="demo")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine, tok = build(args.model)
    grammar = json_schema_grammar(SCHEMA)
    print(
        f"model {args.model}, vocabulary {tok.vocab_size}, {args.tokens} tokens per row, "
        f"{args.threads} torch thread(s)"
    )
    timer = Timed(engine)
    print(
        "| batch | unconstrained tok/s | constrained tok/s | cost (tok/s) "
        "| constraint share of constrained time | target <= 15% |"
    )
    print("|---|---|---|---|---|---|")
    for batch in (1, 16):
        prompts = [tok.encode(f"item {i}:") for i in range(batch)]
        free = [SamplingParams(max_new_tokens=args.tokens, seed=i) for i in range(batch)]
        constrained = [
            SamplingParams(max_new_tokens=args.tokens, seed=i, grammar=grammar)
            for i in range(batch)
        ]
        tokens_per_second(engine, prompts, constrained)  # warm up (compiles the grammar)
        best = {"free": 0.0, "constrained": 0.0}
        shares = []
        for _ in range(args.rounds):
            best["free"] = max(best["free"], tokens_per_second(engine, prompts, free))
            timer.seconds = 0.0
            start = time.perf_counter()
            speed = tokens_per_second(engine, prompts, constrained)
            shares.append(timer.seconds / (time.perf_counter() - start))
            best["constrained"] = max(best["constrained"], speed)
        cost = 1 - best["constrained"] / best["free"]
        share = min(shares)
        verdict = "PASS" if share <= 0.15 else "MISS"
        print(
            f"| {batch} | {best['free']:.0f} | {best['constrained']:.0f} | {cost:.1%} "
            f"| {share:.1%} | {verdict} |"
        )


if __name__ == "__main__":
    main()
