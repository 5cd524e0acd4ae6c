"""Fuzzing the API from its own OpenAPI document (schemathesis): no request may get a 5xx, and
with every check on, the document states exactly what the server accepts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from serving_tiny import one_torch_thread, tiny_chat_model, trained_tiny_run  # noqa: F401

from shoshin.serving import ServeConfig, background_server, create_app

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_server_errors(mode):
    """Valid requests (positive) and requests that break the schema (negative): never a 5xx."""
    model, tok = tiny_chat_model()
    app = create_app(model, tok, "tiny-chat", ServeConfig(max_tokens=16))
    with background_server(app) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        # A bounded number of examples over all operations keeps this to seconds.
        @given(case=strategy)
        @settings(
            max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        fuzz()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_schemathesis_all_checks_against_shoshin_serve(tmp_path):
    """`schemathesis run --checks all` against a real `shoshin serve`: no 5xx, and the document is
    exact: every schema-valid request is served (2xx) and every schema-violating one refused (4xx).

    Two rules no JSON Schema can state are held by other tests (test_serving_protocol.py,
    test_structured_serving.py): a text prompt must fit the context window (this model's holds
    what the fuzzer's strings come to), and a named tool_choice must be among the tools
    (schemathesis_hooks.py drops exactly that 400)."""
    # A byte-level BPE vocabulary can write any JSON (structured output), and a 2048-token
    # context holds the fuzzer's strings.
    run_id = trained_tiny_run(
        tmp_path / "runs",
        "data.tokenizer=bpe",
        "data.vocab_size=300",
        "model.block_size=2048",
        "train.batch_size=1",
        steps=2,
    )
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "shoshin", "serve", run_id, "--port", str(port), "--threads", "1"]
        + ["--max-tokens", "4", "--cors-origin", "https://app.example"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        fuzz = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json"]
            + ["--checks", "all"]
            + ["--max-examples", "12", "--seed", "1", "--wait-for-schema", "120"]
            + ["--request-timeout", "60"],
            env={
                **os.environ,
                "NO_COLOR": "1",
                "SCHEMATHESIS_HOOKS": "schemathesis_hooks",  # the one rule a schema cannot state
                "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path]),
            },
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        assert fuzz.returncode == 0, fuzz.stdout[-30000:] + fuzz.stderr[-2000:]
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
