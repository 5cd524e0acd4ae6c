"""`shoshin serve`: the OpenAI-compatible API on a real uvicorn server on a free loopback port."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from conftest import run_cli
from serving_tiny import (  # noqa: F401
    endless_model,
    one_torch_thread,
    tiny_chat_model,
    trained_tiny_run,
)

from shoshin.data.chat import render_chat
from shoshin.generation import SamplingParams
from shoshin.generation.chat import chat_template, fit_messages
from shoshin.serving import BatchScheduler, ServeConfig, background_server, create_app

QUESTIONS = [
    "hello",
    "how are you?",
    "what is your name?",
    "tell me a story",
    "bye",
    "do you like tea?",
    "hi",
    "what?",
    "story please",
    "tea or coffee?",
    "good morning",
    "name?",
    "are you fine?",
    "see you",
    "once upon a time",
    "thank you",
]


@pytest.fixture(scope="module")
def chat_server():
    model, tok = tiny_chat_model()
    with background_server(create_app(model, tok, "tiny-chat", ServeConfig(max_tokens=60))) as url:
        yield url


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _wait_idle(url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(f"{url}/health").json()
        if health["active"] == 0 and health["queued"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.05)


def test_openai_client_chat_streamed_chat_and_completion(chat_server):
    client = _client(chat_server)
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    messages = [{"role": "user", "content": "what is your name?"}]

    reply = client.chat.completions.create(
        model="tiny-chat", messages=messages, temperature=0, max_tokens=30
    )
    text = reply.choices[0].message.content
    assert reply.object == "chat.completion" and text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(render_chat(tiny_chat_model()[1], messages, True)[0])
    assert 0 < reply.usage.completion_tokens <= 30
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(
        model="tiny-chat",
        messages=messages,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the reply should arrive in several chunks"
    assert "".join(pieces) == text
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[
        0
    ].finish_reason

    completion = client.completions.create(
        model="tiny-chat", prompt="once upon a", max_tokens=12, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens <= 12 and completion.choices[0].text


def _stream_chat(url: str, question: str, **extra) -> str:
    body = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 40}
    text = ""
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, **extra, "stream": True}, timeout=120
    ) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line.removeprefix("data: "))
        text += chunk["choices"][0]["delta"].get("content", "")
    return text


def test_16_concurrent_streaming_clients_get_their_single_client_greedy_text(chat_server):
    alone = [_stream_chat(chat_server, q) for q in QUESTIONS]
    assert len(set(alone)) > 3, "the questions should get different replies"
    steps_before = httpx.get(f"{chat_server}/health").json()["steps"]
    results: list[str | None] = [None] * len(QUESTIONS)

    def client(i: int) -> None:
        results[i] = _stream_chat(chat_server, QUESTIONS[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == alone
    # Decoded together: far fewer batched steps than tokens generated one request at a time.
    steps = httpx.get(f"{chat_server}/health").json()["steps"] - steps_before
    assert steps < sum(len(a) for a in alone) / 2
    assert _wait_idle(chat_server)["active"] == 0


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_scheduler_greedy_and_seeded_rows_do_not_depend_on_the_batch(arch):
    model, _ = endless_model(arch)
    prompts = [[i % 9, (i * 5) % 9, 3][: 1 + i % 3] for i in range(16)]
    params = [
        SamplingParams(max_new_tokens=20, temperature=0.0 if i % 2 else 0.9, top_p=0.9, seed=i)
        for i in range(16)
    ]

    def run(indices: list[int], slots: int) -> dict[int, list]:
        scheduler = BatchScheduler(model, slots)
        outputs = {i: [] for i in indices}
        done = threading.Semaphore(0)
        for i in indices:

            def listen(token, logprob, reason, i=i):
                outputs[i].append(token if token is not None else reason)
                if token is None:
                    done.release()

            scheduler.submit(prompts[i], params[i], listen)
        scheduler.start()  # all waiting at once: they join together (one padded prefill for a GPT)
        for _ in indices:
            assert done.acquire(timeout=60)
        scheduler.stop()
        return outputs

    alone = {i: run([i], 1)[i] for i in range(16)}
    assert run(list(range(16)), 16) == alone
    assert run(list(range(16)), 5) == alone  # more requests than slots: they queue, then join
    assert all(out[-1] == "length" and len(out) == 21 for out in alone.values())


def test_api_key_required_when_set():
    model, tok = tiny_chat_model()
    app = create_app(model, tok, "tiny-chat", ServeConfig(api_key="s3cret"))
    with background_server(app) as url:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        missing = httpx.post(f"{url}/v1/chat/completions", json=body)
        wrong = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}
        )
        right = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            _client(url, "nope").models.list()
        assert _client(url, "s3cret").models.list().data[0].id == "tiny-chat"


def test_client_disconnecting_mid_stream_frees_its_slot():
    model, tok = endless_model("lstm")  # would generate for minutes if nobody cancelled it
    app = create_app(model, tok, "endless", ServeConfig(max_tokens=1_000_000))
    with background_server(app) as url:
        body = {"prompt": "abc", "max_tokens": 1_000_000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = (line for line in r.iter_lines() if line)
            for _ in range(5):
                assert next(lines).startswith("data: ")
            assert httpx.get(f"{url}/health").json()["active"] == 1
        # The connection is closed: the server must notice and free the slot at a step boundary.
        assert _wait_idle(url)["active"] == 0

        # A non-streamed request whose client gives up is cancelled too.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=1.0)
        assert _wait_idle(url)["active"] == 0


def test_a_model_without_role_tokens_chats_in_plain_text():
    model, tok = endless_model("gpt")  # its tokenizer has no special tokens at all
    with background_server(create_app(model, tok, "plain", ServeConfig(max_tokens=8))) as url:
        reply = _client(url).chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "a bad egg"}], temperature=0
        )
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 8
        assert reply.usage.prompt_tokens == len(tok.encode("User: a bad egg\nAssistant:"))


def _chunked_body(size: int):
    """A JSON body sent in chunks, without a Content-Length to check up front."""
    yield b'{"prompt": "'
    for _ in range(size // 1000):
        yield b"a" * 1000
    yield b'"}'


def test_bad_requests_get_openai_style_4xx_and_the_server_keeps_serving(chat_server):
    post = lambda path, **kw: httpx.post(f"{chat_server}{path}", timeout=30, **kw)  # noqa: E731
    ok = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases = [
        (
            post(
                "/v1/chat/completions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            400,
            "JSON",
        ),
        (post("/v1/chat/completions", json={"messages": []}), 400, "messages"),
        (post("/v1/chat/completions", json={"messages": "hi"}), 400, "messages"),
        (post("/v1/chat/completions", json={**ok, "temperature": "hot"}), 400, "temperature"),
        (post("/v1/chat/completions", json={**ok, "max_tokens": -3}), 400, "max_tokens"),
        (
            post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "role",
        ),
        (post("/v1/chat/completions", json={**ok, "model": "gpt-17"}), 404, "gpt-17"),
        (post("/v1/chat/completions", json={**ok, "stop": ["a", "b", "c", "d", "e"]}), 400, "stop"),
        (post("/v1/chat/completions", json=[1, 2]), 400, "body"),
        (post("/v1/completions", json={"prompt": "hello " * 100}), 400, "context window"),
        (post("/v1/completions", json={"prompt": 42}), 400, "prompt"),
        (post("/v1/completions", content=b"x" * 2_000_000), 413, "larger"),
        (post("/v1/completions", content=_chunked_body(2_000_000)), 413, "larger"),
        (httpx.get(f"{chat_server}/v1/nothing"), 404, "Not Found"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert words in error["message"] and error["type"], error
    assert post("/v1/chat/completions", json=ok).status_code == 200


def test_over_long_chat_drops_oldest_turns_keeps_system_and_says_so(chat_server):
    system = {"role": "system", "content": "be kind"}
    turns = []
    for i in range(12):
        turns += [
            {"role": "user", "content": f"hello {i}"},
            {"role": "assistant", "content": "hi there"},
        ]
    turns.append({"role": "user", "content": "bye"})
    body = {"messages": [system, *turns], "temperature": 0, "max_tokens": 20}
    r = httpx.post(f"{chat_server}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    dropped = r.json()["shoshin"]["dropped_messages"]
    assert dropped > 0 and r.headers["X-Shoshin-Dropped-Messages"] == str(dropped)
    assert r.json()["usage"]["prompt_tokens"] <= 96 - 20
    # Same reply as sending only what was kept: the system prompt and the newest turns.
    kept = {**body, "messages": [system, *turns[dropped:]]}
    again = httpx.post(f"{chat_server}/v1/chat/completions", json=kept, timeout=30).json()
    assert again["choices"][0]["message"] == r.json()["choices"][0]["message"]
    assert again["shoshin"] is None
    assert again["usage"]["prompt_tokens"] == r.json()["usage"]["prompt_tokens"]


def test_fit_messages_drops_the_fewest_oldest_exchanges():
    """The binary search gives what dropping one exchange at a time would."""
    _, tok = tiny_chat_model()
    template = chat_template(tok)
    rng = random.Random(0)
    for _ in range(40):
        turns = [
            {"role": ("user", "assistant")[i % 2], "content": "hi " * rng.randint(0, 12)}
            for i in range(rng.randint(1, 9))
        ]
        messages = (
            [{"role": "system", "content": "be kind"}, *turns] if rng.random() < 0.5 else turns
        )
        window, room = rng.randint(10, 120), rng.randint(0, 30)
        head, rest = (
            (messages[:1], messages[1:]) if messages[0]["role"] == "system" else ([], messages)
        )
        dropped = 0
        while (
            len(template.render(head + rest[dropped:])) + room > window and len(rest) - dropped > 1
        ):
            dropped += 2 if len(rest) - dropped > 2 else 1
        assert fit_messages(template, messages, window, room) == (
            template.render(head + rest[dropped:]),
            dropped,
        )


@pytest.fixture(scope="module")
def endless_server():
    """A model that never stops by itself (no end token): every reply runs to max_tokens, so tests
    can assert mechanisms without depending on what an untrained model happens to say."""
    model, tok = endless_model("gpt")
    with background_server(create_app(model, tok, "endless", ServeConfig(max_tokens=60))) as url:
        yield url


def test_max_tokens_capped_stop_strings_cut_and_seeds_repeat(endless_server):
    client = _client(endless_server)
    capped = client.completions.create(
        model="endless", prompt="a", max_tokens=10_000, temperature=0
    )
    assert capped.usage.completion_tokens == 60  # the server's --max-tokens
    assert capped.choices[0].finish_reason == "length"

    full = client.completions.create(model="endless", prompt="a bad", temperature=0, max_tokens=30)
    text = full.choices[0].text
    assert len(text) == 30  # one character per token, and nothing stops it
    cut = client.completions.create(
        model="endless", prompt="a bad", temperature=0, max_tokens=30, stop=[text[3:5]]
    )
    assert cut.choices[0].text == text[: text.index(text[3:5])]
    assert cut.choices[0].finish_reason == "stop"

    messages = [{"role": "user", "content": "a bad egg"}]
    sampled = [
        client.chat.completions.create(
            model="endless", messages=messages, temperature=1.0, seed=s, max_tokens=30
        )
        .choices[0]
        .message.content
        for s in (7, 7)
    ]
    assert sampled[0] == sampled[1]


def test_too_many_concurrent_requests_get_429():
    model, tok = endless_model("lstm")
    app = create_app(model, tok, "endless", ServeConfig(max_concurrent=1, max_tokens=1_000_000))
    with background_server(app) as url:
        body = {"prompt": "abc", "max_tokens": 1_000_000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()  # (a dropped iterator would close the stream)
            assert next(lines).startswith("data: ")
            second = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 2})
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "rate_limit_exceeded"
        _wait_idle(url)
        assert (
            httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code
            == 200
        )


def test_web_page_health_and_openapi(chat_server):
    page = httpx.get(chat_server)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text and "http" not in page.text.replace("http-equiv", "")
    health = httpx.get(f"{chat_server}/health").json()
    assert health["status"] == "ok" and health["slots"] == 16
    paths = httpx.get(f"{chat_server}/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/chat/completions", "/v1/completions", "/health"} <= set(paths)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_shoshin_serve_cli_on_a_trained_run(tmp_path):
    run_id = trained_tiny_run(tmp_path / "runs")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoshin",
            "serve",
            run_id[:12],
            "--port",
            str(port),
            "--threads",
            "1",
            "--quantize",
            "int8",  # the fast path a user picks; server == naive is held in fp32 elsewhere
        ],
        env={**os.environ, "SHOSHIN_API_KEY": "k"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert _client(url, "k").models.list().data[0].id == run_id
        reply = _client(url, "k").chat.completions.create(
            model=run_id, messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert reply.usage.completion_tokens <= 5
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
    busy = run_cli("serve", run_id, "--port", str(port), "--max-batch", "0")
    assert busy.returncode == 2 and "--max-batch" in busy.stderr and "Traceback" not in busy.stderr
