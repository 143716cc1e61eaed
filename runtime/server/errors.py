"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from http import HTTPStatus

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from infernetes.runtime.engine.async_engine import EngineDeadError
from infernetes.runtime.tokenizer import ChatTemplateError

_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
          405: "MethodNotAllowedError", 503: "ServiceUnavailableError",
          500: "InternalServerError"}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, HTTPStatus(status).phrase),
                      "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


def install_error_handlers(app) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, e: OpenAIError):
        return error_response(e.status, e.message, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        # Unknown paths, wrong methods, bodies that are not JSON: OpenAI's shape too.
        detail = e.detail if isinstance(e.detail, str) else HTTPStatus(e.status_code).phrase
        return error_response(e.status_code, detail, headers=getattr(e, "headers", None))

    @app.exception_handler(ValueError)
    async def _value(_: Request, e: ValueError):
        return error_response(400, str(e))

    @app.exception_handler(ChatTemplateError)
    async def _template(_: Request, e: ChatTemplateError):
        return error_response(400, str(e), "messages")

    @app.exception_handler(EngineDeadError)
    async def _dead(_: Request, e: EngineDeadError):
        return error_response(503, str(e))
