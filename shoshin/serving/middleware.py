"""What wraps every request before a route sees it: the body-size limit, JSON whatever the
Content-Type says, HEAD as GET, and the API key."""

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


class JsonBody:
    """ASGI middleware: a request body is read as JSON whatever its Content-Type says.

    Every body this API takes is JSON, and clients label it loosely: `curl -d` sends
    application/x-www-form-urlencoded, some send text/plain. Reading the JSON they meant beats a
    400 that sends them to debug valid JSON (an invalid body is still a 400 saying so).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"] = [*headers, (b"content-type", b"application/json")]
        await self.app(scope, receive, send)


class HeadAsGet:
    """ASGI middleware: HEAD works wherever GET does (RFC 9110); the server leaves out the body.

    FastAPI's routes answer only the methods they name; the HTTP server (uvicorn) sends no body
    for a request it received as HEAD, so the route runs as GET on a copy of the scope."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


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
