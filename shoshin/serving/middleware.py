"""What wraps every request before a route sees it: the body-size limit and the API key."""

from __future__ import annotations

import hmac

from fastapi import Request

from shoshin.serving.errors import BODY_ERROR, APIError


class BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds `limit` bytes, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(
            413, f"request body is larger than {self.limit} bytes", code="body_too_large"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large.response()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI turns errors while reading a body into its own 400; this marks the real one.
                scope[BODY_ERROR] = too_large
                raise too_large
            return message

        try:
            await self.app(scope, limited_receive, send)
        except APIError as exc:
            await exc.response()(scope, receive, send)


async def authorize(request: Request) -> None:
    """A route dependency: with an API key configured, `Authorization: Bearer KEY` must match."""
    api_key = request.app.state.server.config.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), api_key.encode()
    ):
        raise APIError(
            401,
            "missing or incorrect API key; send `Authorization: Bearer KEY`",
            code="invalid_api_key",
        )
