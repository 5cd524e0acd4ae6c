"""Tiny local lm-evaluation-harness tasks written on the spot (no downloads), for the eval tests."""

from __future__ import annotations

import json
from pathlib import Path

# Each question and answer fit in the tiny preset's window of 64 characters (the harness would cut
# a longer context on the left).
QUESTIONS = [
    ("Hi, I am Ann. Dinner?", ["Hello Ann! We have pasta tonight.", "Goodbye."], 0),
    ("Thanks!", ["Blue sky.", "Enjoy the soup, Bob."], 1),
    ("I am Cleo. Dinner?", ["Hello Cleo! We have rice tonight.", "No."], 0),
    ("What is for dinner?", ["Tacos.", "We have curry tonight.", "Eve"], 1),
    ("Hi, I am Dan.", ["Hello Dan!", "Enjoy the salad."], 0),
    ("Be brief.", ["Thanks!", "Hello there, friend, and a very long answer indeed."], 0),
]
TEXTS = [
    "Hello Ann! We have pasta tonight. Enjoy the pasta, Ann. " * 3,
    "Hi, I am Bob. What is for dinner?",
]
GENERATE = [
    ("Hi, I am Ann. What is for dinner?", "Hello Ann! We have pasta tonight."),
    ("Thanks!", "Enjoy the pasta, Ann."),
]


def _task(folder: Path, name: str, rows: list[dict], body: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n" + body + "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )


def write_tasks(folder: Path) -> Path:
    """tiny_mc (multiple choice), tiny_ppl (rolling log-likelihood) and tiny_gen (generate_until)."""
    folder.mkdir(parents=True, exist_ok=True)
    _task(
        folder,
        "tiny_mc",
        [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
    )
    _task(
        folder,
        "tiny_ppl",
        [{"text": t} for t in TEXTS],
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n"
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
    )
    _task(
        folder,
        "tiny_gen",
        [{"question": q, "answer": a} for q, a in GENERATE],
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n"
        '  until: ["\\n"]\n  max_gen_toks: 12\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n",
    )
    return folder
