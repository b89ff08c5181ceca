"""The engine's ASGI app: the routes of ``cpu_engine.routes`` behind vLLM's key check and errors.

``create_app`` puts one ``Engine`` on ``app.state.engine`` and registers the routes of its task:
``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` (with retrieve and cancel) and
``/v1/messages`` (with ``count_tokens``) for chat and completion models; ``/v1/embeddings``,
``/score``, ``/v1/score``, ``/rerank``, ``/v1/rerank`` and ``/v2/rerank`` for embedding models;
``/health``, ``/metrics``, ``/v1/models`` and ``/tokenize`` for all. Auth covers ``/v1`` and
``/v2``, as vLLM's ``--api-key`` does (``Authorization: Bearer`` or, for Anthropic clients,
``x-api-key``), and every error leaves in OpenAI's shape, or Anthropic's on ``/v1/messages``, with
exception text kept in the engine log.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cpu_engine import messages, responses, routes, scoring
from cpu_engine.engine import Engine
from cpu_engine.errors import InputError, error_body, error_id, internal_message

logger = logging.getLogger("berth.cpu_engine")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(
    status: int,
    message: str,
    *,
    type_: str,
    param: str | None = None,
    code: str | int | None = None,
    path: str = "",
) -> JSONResponse:
    """The error in its caller's shape: Anthropic's on ``/v1/messages``, OpenAI's elsewhere."""
    if messages.is_messages_path(path):
        return JSONResponse(messages.anthropic_error(status, message), status_code=status)
    return JSONResponse(error_body(message, type_=type_, param=param, code=code), status_code=status)


class ApiKeyMiddleware:
    """Key check with the scope of vLLM's ``--api-key``: only ``/v1`` and ``/v2`` paths are guarded,
    so ``/health``, ``/metrics``, ``/tokenize``, ``/score`` and ``/rerank`` stay open (the worker
    port is private to Berth). The key comes as ``Authorization: Bearer`` or, as Anthropic's SDK
    sends it, ``x-api-key``. Plain ASGI, so streamed responses pass through untouched."""

    def __init__(self, app: ASGIApp, *, api_key: str):
        self.app = app
        self.bearer = f"Bearer {api_key}".encode()
        self.key = api_key.encode()

    def allowed(self, headers: list[tuple[bytes, bytes]]) -> bool:
        found = dict(headers)
        bearer = hmac.compare_digest(found.get(b"authorization", b""), self.bearer)
        return hmac.compare_digest(found.get(b"x-api-key", b""), self.key) or bearer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        guarded = path.startswith("/v1") or path.startswith("/v2")
        if scope["type"] == "http" and guarded and scope["method"] != "OPTIONS":
            if not self.allowed(scope["headers"]):
                response = error_response(
                    401,
                    "Incorrect API key provided.",
                    type_="invalid_request_error",
                    code="invalid_api_key",
                    path=path,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- exception handlers ----------------------------------------------------------------------------


async def input_error(request: Request, exc: Exception) -> JSONResponse:
    error = cast(InputError, exc)  # registered for InputError only
    return error_response(
        error.status,
        error.message,
        type_="invalid_request_error",
        param=error.param,
        code=error.code,
        path=request.url.path,
    )


async def not_found(request: Request, _exc: Exception) -> JSONResponse:
    return error_response(
        404, "Not found.", type_="invalid_request_error", code="not_found", path=request.url.path
    )


async def not_allowed(request: Request, _exc: Exception) -> JSONResponse:
    return error_response(405, "Method not allowed.", type_="invalid_request_error", path=request.url.path)


async def internal(request: Request, exc: Exception) -> JSONResponse:
    # The exception text and traceback go to the engine log only: they can hold paths, model
    # internals or another request's data, and the caller can do nothing with them.
    failure_id = error_id(request)
    logger.error("request %s failed", failure_id, exc_info=exc)
    return error_response(
        500, internal_message(failure_id), type_="internal_server_error", path=request.url.path
    )


# -- the app ---------------------------------------------------------------------------------------


def create_app(*, task: str, backend: Any, served_name: str, api_key: str | None) -> FastAPI:
    app = FastAPI(title="Berth CPU engine", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = Engine(task=task, backend=backend, served_name=served_name)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    app.add_exception_handler(Exception, internal)

    # The routes return the bodies they built: no response model for FastAPI to re-validate.
    app.add_api_route("/health", routes.health, methods=["GET"], response_model=None)
    app.add_api_route("/metrics", routes.prometheus, methods=["GET"], response_model=None)
    app.add_api_route("/v1/models", routes.models, methods=["GET"], response_model=None)
    app.add_api_route("/tokenize", routes.tokenize, methods=["POST"], response_model=None)
    if task == "embedding":
        app.add_api_route("/v1/embeddings", routes.embeddings, methods=["POST"], response_model=None)
        for path in ("/score", "/v1/score"):
            app.add_api_route(path, scoring.score, methods=["POST"], response_model=None)
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            app.add_api_route(path, scoring.rerank, methods=["POST"], response_model=None)
    else:
        app.add_api_route(
            "/v1/chat/completions", routes.chat_completions, methods=["POST"], response_model=None
        )
        app.add_api_route("/v1/completions", routes.completions, methods=["POST"], response_model=None)
        app.add_api_route("/v1/responses", responses.create, methods=["POST"], response_model=None)
        app.add_api_route(
            "/v1/responses/{response_id}", responses.retrieve, methods=["GET"], response_model=None
        )
        app.add_api_route(
            "/v1/responses/{response_id}/cancel", responses.cancel, methods=["POST"], response_model=None
        )
        app.add_api_route("/v1/messages", messages.create, methods=["POST"], response_model=None)
        app.add_api_route(
            "/v1/messages/count_tokens", messages.count_tokens, methods=["POST"], response_model=None
        )
    return app
