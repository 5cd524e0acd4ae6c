"""What provenance costs: recording code + environment per run, and the leakage check per corpus.

    python benchmarks/provenance_cost.py [--source chitchat] [--repeats 5]

Prints the time to record a run's code state (git state of this checkout, patches, untracked
files, the per-file code fingerprint) and environment (every installed package), and the time of
the train/validation leakage check next to the tokenization it accompanies, measured side by side
in one process. Run from the repository root so the git capture sees this checkout.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from shoshin.data.dataset import _encode, split_documents
from shoshin.data.leakage import overlap_report
from shoshin.data.sources import load_corpus
from shoshin.data.tokenizers import CHAT_TOKENS, EOT, train_tokenizer
from shoshin.runs.provenance import code_record, environment


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="chitchat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        code_s = timed(lambda: code_record(Path(tmp), skip=(Path("runs"),)), args.repeats)
    env_s = timed(environment, args.repeats)
    print(f"code record (git, patch, untracked, hashes):{code_s * 1000:8.1f} ms")
    print(f"environment (packages, CPU, GPUs):          {env_s * 1000:8.1f} ms")

    corpus = load_corpus(args.source)
    train, val = split_documents(corpus, 0.1, 1337)
    chars = (
        sum(len(m["content"]) for d in corpus.documents for m in d)
        if corpus.kind == "chat"
        else sum(len(d) for d in corpus.documents)
    )

    def tokenize() -> None:
        texts = (
            [m["content"] for d in corpus.documents for m in d]
            if corpus.kind == "chat"
            else corpus.documents
        )
        specials = [EOT, *CHAT_TOKENS] if corpus.kind == "chat" else [EOT]
        tok = train_tokenizer("char", texts, 0, specials)
        _encode(corpus.kind, train, tok, "all")
        _encode(corpus.kind, val, tok, "all")

    leak_s = timed(lambda: overlap_report(corpus.kind, train, val), 1)
    tok_s = timed(tokenize, 1)
    print(f"corpus {args.source}: {len(corpus.documents)} documents, {chars:,} characters")
    print(f"leakage check:        {leak_s:6.2f} s")
    print(f"char tokenization:    {tok_s:6.2f} s")
    print(f"leakage / tokenization: {leak_s / tok_s:.2f}x")


if __name__ == "__main__":
    main()
