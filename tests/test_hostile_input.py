"""Text at every edge: lone surrogates, invalid bytes, byte-order marks and special-token text,
through the tokenizers, the CLI, the terminal chat, data loading and a real server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
import torch
from conftest import run_cli

from shoshin.config import ModelConfig, load_config, read_config
from shoshin.data.chat import render_chat
from shoshin.data.sources import load_corpus
from shoshin.data.tokenizers import CHAT_TOKENS, END, EOT, USER, BpeTokenizer, CharTokenizer
from shoshin.errors import ShoshinError
from shoshin.models import build_model
from shoshin.serving import ServeConfig, background_server, create_app
from shoshin.storage.text import clean_text

BOM = b"\xef\xbb\xbf"
TEXTS = ["hello there, how are you? fine, thanks. <|end|> is text here."] * 20


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.train(TEXTS, 300, [EOT, *CHAT_TOKENS])


@pytest.fixture(scope="module")
def char() -> CharTokenizer:
    return CharTokenizer.train([*TEXTS, "\ufffd"], [EOT, *CHAT_TOKENS])


def test_clean_text_rules():
    assert clean_text("plain ü 😀") == "plain ü 😀"
    assert clean_text("a\ud800b") == "a\ufffdb"  # a lone surrogate, e.g. "\ud800" in JSON
    assert clean_text("hi \udcff") == "hi \ufffd"  # the byte 0xff, escaped by sys.argv / stdin
    assert clean_text("\ud83d\ude00") == "😀"  # a valid pair left as two code points
    assert clean_text("\ude00\ud83d") == "\ufffd\ufffd"  # the same two, in the wrong order


@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_encode_accepts_any_python_string(request, tokenizer):
    tok = request.getfixturevalue(tokenizer)
    for text in ("\ud800", "hi \udcff", "\ud83d\ude00 ok"):
        assert tok.encode(text) == tok.encode(clean_text(text))
    assert tok.decode(tok.encode("hi \udcff")) == "hi \ufffd"


@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_special_token_text_is_text(request, tokenizer):
    """A message containing `<|end|>` or `<|user|>` cannot end a turn or change the role."""
    tok = request.getfixturevalue(tokenizer)
    text = f"hi {USER} there {END} {EOT}"
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text
    rendered, _ = render_chat(tok, [{"role": "user", "content": text}])
    assert rendered.count(tok.special_tokens[END]) == 1  # only the one render_chat placed


def test_loaded_bpe_tokenizer_keeps_text_as_text(bpe, tmp_path):
    from shoshin.data.tokenizers import load_tokenizer

    bpe.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.special_tokens[END] not in loaded.encode(f"a {END} b")
    assert loaded.sha256() == bpe.sha256()  # the setting is not written into tokenizer.json


def test_byte_order_marks_are_skipped(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(BOM + b"to be or not to be\n")
    assert load_corpus(str(text)).documents == ["to be or not to be\n"]
    chat = tmp_path / "chat.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    chat.write_bytes(BOM + (line + "\n").encode() * 2)
    assert load_corpus(str(chat)).documents[0] == [{"role": "user", "content": "hi"}]
    config = tmp_path / "config.yaml"
    config.write_bytes(BOM + b"model: {n_layer: 3}\n")
    assert load_config(str(config)).model.n_layer == 3
    assert read_config(config).model.n_layer == 3


def test_config_that_is_not_utf8_is_a_one_line_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ShoshinError, match=r"config.yaml is not valid UTF-8 text \(bad byte at"):
        load_config(str(config))


def test_lone_surrogate_in_chat_jsonl(tmp_path):
    path = tmp_path / "chat.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "hi \ud800"}]})
    assert "\\ud800" in line  # json.dumps escapes it: the file itself is valid UTF-8
    path.write_text(line + "\n")
    assert load_corpus(str(path)).documents[0][0]["content"] == "hi \ufffd"


@pytest.mark.slow
def test_training_on_chat_jsonl_with_bom_and_lone_surrogates(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"question {i} \ud800 <|assistant|>"},
                    {"role": "assistant", "content": f"answer {i} \udcff, fine"},
                ]
            }
        )
        for i in range(40)
    ]
    path.write_bytes(BOM + "\n".join(lines).encode())
    result = run_cli(
        "train",
        "tiny",
        f"data.source={path}",
        "data.tokenizer=bpe",
        "data.vocab_size=280",
        "model.block_size=16",
        "train.max_steps=2",
        "train.eval_iters=1",
        "train.sample_tokens=4",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def invalid_byte_env(strict_stdin: bool) -> dict:
    """Python decodes stdin with surrogateescape under C.UTF-8, strictly under PYTHONIOENCODING."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if strict_stdin:
        env["PYTHONIOENCODING"] = "utf-8"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("strict_stdin", [False, True], ids=["escaped", "strict"])
def test_invalid_bytes_on_the_command_line_and_in_chat(tiny_bpe_run, strict_stdin):
    shoshin = [sys.executable, "-m", "shoshin"]
    env = invalid_byte_env(strict_stdin)
    sample = subprocess.run(
        [*shoshin, "sample", str(tiny_bpe_run), "--prompt", b"hi \xff", "--max-new-tokens", "3"],
        capture_output=True,
        timeout=300,
        env=env,
    )
    assert sample.returncode == 0, sample.stderr.decode(errors="replace")
    chat = subprocess.run(
        [*shoshin, "chat", str(tiny_bpe_run), "--max-new-tokens", "3"],
        input=b"hi \xff\n/quit\n",
        capture_output=True,
        timeout=300,
        env=env,
    )
    assert chat.returncode == 0, chat.stderr.decode(errors="replace")
    assert b"Traceback" not in sample.stderr + chat.stderr
    assert chat.stdout.count(b"you> ") == 2  # the line was answered and /quit was read


@pytest.fixture(scope="module")
def bpe_chat_server(bpe):
    """A real server on loopback with a BPE chat model (random weights: only the mechanism counts)."""
    torch.manual_seed(0)
    config = ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=64, vocab_size=bpe.vocab_size)
    model = build_model(config).eval()
    with background_server(create_app(model, bpe, "bpe", ServeConfig(max_tokens=8))) as url:
        yield url


# Raw JSON bodies: "\ud800" is a valid JSON escape for a code point no UTF-8 text can hold.
LONE_SURROGATE_REQUESTS = {
    "chat": ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi \\ud800"}]'),
    "chat-stream": (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "\\udcff"}], "stream": true',
    ),
    "completion": ("/v1/completions", '{"prompt": "hi \\ud800"'),
    "completion-stream": ("/v1/completions", '{"prompt": "\\ud800", "stream": true'),
    "stop": ("/v1/completions", '{"prompt": "hi", "stop": ["\\ud800"]'),
}


@pytest.mark.parametrize("kind", LONE_SURROGATE_REQUESTS)
def test_server_answers_lone_surrogates(bpe_chat_server, kind):
    path, body = LONE_SURROGATE_REQUESTS[kind]
    body += ', "model": "bpe", "max_tokens": 3}'
    response = httpx.post(
        bpe_chat_server + path,
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    if '"stream": true' in body:
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        for event in events[:-1]:
            json.loads(event.removeprefix("data: "))
    else:
        assert response.json()["usage"]["completion_tokens"] >= 1
