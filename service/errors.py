"""ApiError, what a client can act on, and the handlers that render every error the gateway answers as
one JSON shape: {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An error the client can act on: HTTP status, a stable code, a message, and the field concerned."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers

    def body(self) -> dict[str, Any]:
        error = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


ECHO_LIMIT = 80  # longest piece of a client's input an error message repeats back


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """text, or its first `limit` characters and how long it was: errors never echo a huge input whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


def validation_field(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return clip(".".join(parts)) or "body"


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # its loc holds the character position, not a field
        where = first.get("loc", ())[-1:]
        detail = (first.get("ctx") or {}).get("error", "JSON decode error")
        at = f" at character {where[0]}" if where and isinstance(where[0], int) else ""
        return invalid("body", f"the request body is not valid JSON: {detail}{at}").response()
    field = validation_field(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return invalid(field, f"{field}: {message}").response()


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    return ApiError(503, "unavailable", "the job store (Redis) is unreachable; retry shortly",
                    headers={"Retry-After": "5"}).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    return ApiError(exc.status_code, code, str(exc.detail)).response()


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(StarletteHTTPException, _http_error)
