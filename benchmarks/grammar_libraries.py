"""Which grammar library shoshin's constrained decoding uses: llguidance, xgrammar or outlines-core.

For each library and vocabulary: the time to compile a JSON schema, then the time per token to
compute the allowed-token mask and advance the matcher, over a generation that draws uniformly among
the allowed tokens (the worst case: an untrained model wanders everywhere the grammar allows). The
vocabularies: shoshin's char tokenizer, its byte-level BPE (2,048), and a Llama/Qwen3-style
byte-level BPE built locally (8,192; no hub). Each library is fed raw token bytes, so none of them
needs a Hugging Face tokenizer object. A library that is not installed is skipped.

    python benchmarks/grammar_libraries.py [--tokens 300]

The other two libraries are not shoshin dependencies; install them by hand to compare.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "address", "ok"],
    "additionalProperties": False,
}
# JSON Schema features whose support is probed (compiled alone; "ok" or the library's complaint).
FEATURES = {
    "pattern": {"type": "string", "pattern": "^[a-z]+$"},
    "format: date-time": {"type": "string", "format": "date-time"},
    "minLength/maxLength": {"type": "string", "minLength": 2, "maxLength": 5},
    "minimum/maximum": {"type": "integer", "minimum": 3, "maximum": 9},
    "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
    "oneOf": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
    "$ref/$defs": {"$defs": {"a": {"type": "integer"}}, "$ref": "#/$defs/a"},
    "recursive $ref": {
        "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n",
    },
    "minItems/maxItems": {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 1,
        "maxItems": 3,
    },
    "const/enum": {"enum": [1, "x", None]},
    "not (unsupported?)": {"not": {"type": "integer"}},
}


def vocabularies(tokens_dir: Path) -> dict:
    """name -> (token bytes, end-of-text id, encoder) for the three vocabularies."""
    from shoshin.data.tokenizers import BpeTokenizer, CharTokenizer
    from shoshin.generation.constraints import token_table

    text = [p.read_text("utf-8") for p in Path(__file__).parent.parent.glob("**/*.py")][:200]
    text += [p.read_text("utf-8") for p in Path(__file__).parent.parent.glob("**/*.md")]
    specials = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    out = {}
    for name, tok in (
        ("char", CharTokenizer.train(text, specials)),
        ("bpe-2048", BpeTokenizer.train(text, 2048, specials)),
        ("llama-style-8192", BpeTokenizer.train(text, 8192, specials)),
    ):
        table = token_table(tok)
        out[name] = (table, tok.special_tokens["<|endoftext|>"], tok.encode)
    return out


def run_llguidance(table, eos, encode, schema, n, rng):
    import llguidance
    import llguidance.torch as lt

    from shoshin.generation.constraints import _Wrapper

    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(_Wrapper(table, eos, encode))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, {"whitespace_flexible": False})
    m = llguidance.LLMatcher(tok, grammar, log_level=0)
    if m.is_error():
        raise ValueError(m.get_error())
    compile_s = time.perf_counter() - t0
    mask = lt.allocate_token_bitmask(1, len(table))
    spent, docs, doc = 0.0, [], []
    for _ in range(n):
        t = time.perf_counter()
        lt.fill_next_token_bitmask(m, mask, 0)
        spent += time.perf_counter() - t
        choice = rng.choice(_allowed(mask, len(table)))
        if choice == eos:
            docs.append(b"".join(table[i] for i in doc))
            m.reset()
            doc = []
            continue
        t = time.perf_counter()
        assert m.consume_token(choice), m.get_error()
        spent += time.perf_counter() - t
        doc.append(choice)
    return compile_s, spent / n, docs


def _allowed(mask, vocab: int) -> list[int]:
    """The token ids a bitmask (1, words) allows (outside the timed part)."""
    import torch

    bits = torch.arange(32, dtype=torch.int32)
    return ((mask[0, :, None] >> bits) & 1).flatten()[:vocab].nonzero()[:, 0].tolist()


def run_xgrammar(table, eos, encode, schema, n, rng):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo(table, xgr.VocabType.RAW, stop_token_ids=[eos])
    compiled = xgr.GrammarCompiler(info).compile_json_schema(
        json.dumps(schema), any_whitespace=False
    )
    m = xgr.GrammarMatcher(compiled)
    compile_s = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, len(table))
    spent, docs, doc = 0.0, [], []
    for _ in range(n):
        t = time.perf_counter()
        m.fill_next_token_bitmask(mask)
        spent += time.perf_counter() - t
        choice = rng.choice(_allowed(mask, len(table)))
        if choice == eos:
            docs.append(b"".join(table[i] for i in doc))
            m.reset()
            doc = []
            continue
        t = time.perf_counter()
        assert m.accept_token(choice)
        spent += time.perf_counter() - t
        doc.append(choice)
    return compile_s, spent / n, docs


def run_outlines(table, eos, encode, schema, n, rng):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    mapping: dict[bytes, list[int]] = {}
    for i, piece in enumerate(table):
        if i != eos and piece:
            mapping.setdefault(piece, []).append(i)
    vocab = Vocabulary(eos, mapping)
    index = Index(build_regex_from_schema(json.dumps(schema)), vocab)
    guide = Guide(index)
    compile_s = time.perf_counter() - t0
    spent, docs, doc = 0.0, [], []
    for _ in range(n):
        t = time.perf_counter()
        allowed = guide.get_tokens()
        spent += time.perf_counter() - t
        choice = rng.choice(allowed)
        if choice == eos or guide.is_finished():
            docs.append(b"".join(table[i] for i in doc))
            guide, doc = Guide(index), []
            continue
        t = time.perf_counter()
        guide.advance(choice)
        spent += time.perf_counter() - t
        doc.append(choice)
    return compile_s, spent / n, docs


def features(runner, table, eos, encode) -> dict[str, str]:
    """Per feature: "ok" (every finished document validates), "refused" (an error naming it) or
    "NOT ENFORCED" (a document that does not validate: the feature was silently dropped)."""
    out = {}
    for name, schema in FEATURES.items():
        try:
            _, _, docs = runner(table, eos, encode, schema, 400, random.Random(0))
        except Exception as exc:
            out[name] = f"refused ({' '.join(str(exc).split())[:50]})"
            continue
        valid = [_validates(schema, d) for d in docs]
        out[name] = f"ok ({len(docs)} documents)" if all(valid) else "NOT ENFORCED"
    return out


def _validates(schema: dict, doc: bytes) -> bool:
    import jsonschema_rs

    try:
        return jsonschema_rs.is_valid(schema, json.loads(doc))
    except ValueError:  # not JSON at all (json.loads is strict about control characters)
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args()
    vocabs = vocabularies(Path("."))
    runners = {
        "llguidance": run_llguidance,
        "xgrammar": run_xgrammar,
        "outlines-core": run_outlines,
    }
    print("| library | vocabulary | compile (ms) | mask + advance per token (µs) |")
    print("|---|---|---|---|")
    usable = {}
    for lib, runner in runners.items():
        try:
            __import__(lib.replace("-", "_"))
        except ImportError:
            print(f"| {lib} | (not installed) | | |")
            continue
        usable[lib] = runner
        for name, (table, eos, encode) in vocabs.items():
            try:
                compile_s, per_token, _ = runner(
                    table, eos, encode, SCHEMA, args.tokens, random.Random(0)
                )
                print(f"| {lib} | {name} | {compile_s * 1e3:.0f} | {per_token * 1e6:.0f} |")
            except Exception as exc:
                print(f"| {lib} | {name} | failed: {str(exc).splitlines()[0][:80]} | |")
    table, eos, encode = vocabs["bpe-2048"]
    for lib, runner in usable.items():
        found = features(runner, table, eos, encode)
        print(f"\n{lib}: " + "; ".join(f"{k}: {v}" for k, v in found.items()))


if __name__ == "__main__":
    main()
