"""An exported chat run behaves in transformers as in shoshin: the chat template renders the same
ids, `generate` stops at the same tokens, and the README's transformers snippet runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, _shared_cache, run_cli

import shoshin
from shoshin.data.chat import render_chat, stop_token_ids
from shoshin.data.tokenizers import END, EOT

transformers = pytest.importorskip("transformers")

MAX_NEW = 40
REPLY = "Sure, I can help with that."
WORDS = "the cat sat on a warm mat and the dog ran to the old red barn by the sea".split()
CONVERSATIONS = [
    [{"role": "user", "content": "Tell me a long story about the sea, please."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is the dog?"},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "And the cat?"},
    ],
    [{"role": "user", "content": "Hi!"}],
]


def write_chat(path: Path, n: int = 200) -> Path:
    """Questions of every shape, always the same short reply: a pattern a tiny model learns in a
    few dozen steps, ending with <|end|> (greedy margins of about 0.5 logits after 60 steps)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            question = " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(4 + i % 5))
            messages = [
                {"role": "user", "content": question.capitalize() + "?"},
                {"role": "assistant", "content": REPLY},
            ]
            if i % 4 == 0:
                messages.insert(0, {"role": "system", "content": "Be brief."})
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(scope="module")
def chat_export(tmp_path_factory) -> tuple[str, Path, Path]:
    """(run id, runs folder, export folder) of a small BPE chat run trained through the CLI.

    The run learns to end its reply with <|end|>, so the greedy replies below end at a stop token
    rather than at the length limit: the comparison covers stopping.
    """
    root = tmp_path_factory.mktemp("chat-export")
    chat = write_chat(root / "chat.jsonl")
    env = {"SHOSHIN_RUNS_DIR": str(root / "runs"), "SHOSHIN_CACHE_DIR": str(_shared_cache())}
    result = run_cli(
        "train",
        "tiny",
        f"data.source={chat}",
        "data.tokenizer=bpe",
        "data.vocab_size=300",
        "data.max_documents=0",
        "data.loss_on=assistant",
        "model.block_size=128",
        "train.max_steps=60",
        "train.eval_interval=0",
        "train.checkpoint_interval=0",
        "train.sample_tokens=0",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (run,) = [p.name for p in (root / "runs").iterdir()]
    out = root / "my-chatbot"  # the README's folder name
    result = run_cli("export", run, "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    return run, root / "runs", out


def _sample(run: str, runs: Path, prompt: str, max_new: int) -> str:
    result = run_cli(
        "sample", run, "--runs-dir", str(runs), "--prompt", prompt,
        "--temperature", "0", "--max-new-tokens", str(max_new),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("\n")


@pytest.mark.slow
def test_transformers_generate_stops_where_shoshin_stops(chat_export):
    run, runs, out = chat_export
    model, tok = shoshin.load(run, runs_dir=runs)
    stops = stop_token_ids(tok)
    assert sorted(stops) == sorted(
        tok.special_tokens[t] for t in (END, EOT, "<|system|>", "<|user|>", "<|assistant|>")
    )
    generation_config = json.loads((out / "generation_config.json").read_text())
    assert generation_config["eos_token_id"] == stops
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == tok.special_tokens[END]

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == END and hf_tok.pad_token == EOT
    stopped = 0
    for messages in CONVERSATIONS:
        inputs = hf_tok.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        prompt = render_chat(tok, messages, add_generation_prompt=True)[0]
        assert inputs["input_ids"][0].tolist() == prompt  # the template renders shoshin's ids

        with torch.no_grad():
            output = hf_model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
        theirs = output[0, len(prompt) :].tolist()
        ours = shoshin.generate(model, prompt, MAX_NEW, temperature=0, stop_ids=stops)
        assert theirs == ours, (tok.decode(theirs), tok.decode(ours))
        stopped += ours[-1] in stops

        if messages is CONVERSATIONS[0]:  # `shoshin sample` prints that reply, without its stop
            reply = ours[:-1] if ours[-1] in stops else ours
            assert _sample(run, runs, messages[0]["content"], MAX_NEW) == tok.decode(reply)
    assert stopped == len(CONVERSATIONS), "the run should have learned to end its replies"

    with pytest.raises(Exception, match="system, user, assistant and tool, not function"):
        hf_tok.apply_chat_template([{"role": "function", "content": "42"}], tokenize=False)


def _readme_snippet() -> str:
    """The README's Python block that loads an export with transformers."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "apply_chat_template" in b]
    return snippet


@pytest.mark.slow
def test_readme_transformers_snippet_runs_and_prints_shoshins_reply(chat_export):
    run, runs, out = chat_export
    snippet = _readme_snippet()
    assert '"my-chatbot"' in snippet and "max_new_tokens=60" in snippet
    result = subprocess.run(
        [sys.executable, "-c", snippet], cwd=out.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.removesuffix("\n") == _sample(run, runs, "Hi!", 60)
