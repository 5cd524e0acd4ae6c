"""Errors in OpenAI's format, and the handlers that turn every failure of a request into one.

Whatever goes wrong (a bad field, an unknown route, a body too large, a bug) the client gets
`{"error": {"message", "type", "param", "code"}}` with a 4xx or 5xx, never a traceback.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoshin.serving.schemas import ErrorResponse

BODY_ERROR = "shoshin.body_error"  # scope key: the 413 of a body that grew too large while read


class APIError(Exception):
    """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code
        self.headers = dict(headers or {})
        if status == 401:
            self.headers["WWW-Authenticate"] = "Bearer"

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers or None)


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        400: "invalid request (bad JSON, wrong types, prompt too long)",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "request body too large",
        429: "too many concurrent requests",
    }.items()
}


def add_error_handlers(app: FastAPI) -> None:
    """Answer every exception a route can raise in OpenAI's error format."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if BODY_ERROR in request.scope:
            return request.scope[BODY_ERROR].response()
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # Allow names what works; HEAD works wherever GET does
            allowed = headers.get("Allow", "").split(", ")
            headers["Allow"] = ", ".join(allowed + ["HEAD"] if "GET" in allowed else allowed)
        return APIError(
            exc.status_code, str(exc.detail), code=str(exc.status_code), headers=headers
        ).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return APIError(
            500, f"internal error: {type(exc).__name__}", type="server_error"
        ).response()


def validation_error(exc: RequestValidationError) -> APIError:
    """The most telling problem of a request that failed validation, as one readable 400.

    A field with several accepted forms (a prompt is text, ids, or a list of either) fails once per
    form; a broken bound ("at least 1 item") says more than "not a string", so it is preferred.
    """
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})",
        )
    field = _path(first)[:1]
    same = [e for e in errors if _path(e)[:1] == field]
    best = next((e for e in same if not e["type"].endswith("_type")), first)
    where = ".".join(_path(best))
    message = best["msg"]
    if best["type"] == "too_short" and best.get("ctx", {}).get("min_length") == 1:
        message = "must not be empty"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return APIError(400, f"{where or 'body'}: {message}{more}", param=where or None)


def _path(error: dict) -> list[str]:
    """Where an error is, without pydantic's names of the union member that was tried."""
    return [
        str(p)
        for p in error.get("loc", ())
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _MEMBER_TAGS))
    ]


_MEMBER_TAGS = {"str", "int", "float", "bool", "list", "dict", "constrained-int", "constrained-str"}
