"""The OpenAPI document of one served model: every bound the server enforces, its model's too.

The schemas (schemas.py) mark token ids; the vocabulary and the context window are known only
once a model is served, so their bounds are written into the document here: token ids get
`maximum`, the keys of objects keyed by token id (logit_bias) a pattern that matches exactly
0..vocab_size-1, and a prompt of token ids `maxItems` (the context window, when it has one).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shoshin.serving.wire import TOKEN_ID, TOKEN_KEYS, TOKEN_LIST


def install_openapi(app: FastAPI, vocab_size: int, context: int | None) -> None:
    """Serve `app`'s OpenAPI document with its model's bounds filled in (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _bound_token_ids(document, vocab_size - 1, context)
        return app.openapi_schema

    app.openapi = openapi


def _bound_token_ids(node: Any, last: int, context: int | None) -> Any:
    if isinstance(node, dict):
        node = {k: _bound_token_ids(v, last, context) for k, v in node.items()}
        if node.pop(TOKEN_ID, False):
            node["maximum"] = last
        if node.pop(TOKEN_LIST, False) and context is not None:
            node["maxItems"] = context
        if node.pop(TOKEN_KEYS, False):
            values = next(iter(node["patternProperties"].values()))
            node["patternProperties"] = {range_pattern(last): values}
        return node
    if isinstance(node, list):
        return [_bound_token_ids(v, last, context) for v in node]
    return node


def range_pattern(last: int) -> str:
    """A regular expression matching the decimal numbers 0..last (no leading zeros) and no other."""
    digits = str(last)
    n = len(digits)
    options = ["0"] if n > 1 else []
    if n > 2:
        options.append(f"[1-9][0-9]{{0,{n - 2}}}")
    elif n == 2:
        options.append("[1-9]")
    # n digits and at most `last`: equal to it up to position i, then smaller there.
    for i, d in enumerate(digits):
        low = 1 if i == 0 and n > 1 else 0
        if int(d) > low:
            tail = f"[0-9]{{{n - i - 1}}}" if n - i - 1 else ""
            options.append(f"{digits[:i]}[{low}-{int(d) - 1}]{tail}")
    options.append(digits)
    return "^(" + "|".join(options) + ")$"
