"""Fuzzing the API from its own OpenAPI document (schemathesis): no request may get a 5xx."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from serving_tiny import one_torch_thread, tiny_chat_model  # noqa: F401

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
