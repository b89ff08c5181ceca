"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Clients see only messages written for them. An engine's 5xx (or any answer that carries an
exception string or a traceback) becomes a message naming the request id, and the engine's text
goes to the log under that id: engine and gateway internals (paths, addresses, stack frames) are
not the client's business and help an attacker. An engine's 4xx message about the client's own
request (a prompt too long for the context, an unsupported parameter) passes through.
"""

from __future__ import annotations

import logging
import re

import orjson

logger = logging.getLogger("berth.gateway.errors")

# What an exception string or a traceback looks like, as opposed to a message about the request.
_INTERNAL = re.compile(
    r"Traceback \(most recent call last\)"
    r'|File "[^"]*", line \d+'
    r"|\b[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt): "
    r"|<[\w.]+ object at 0x[0-9a-fA-F]+>"
    r"|(?:site|dist)-packages"
    r"|/usr/(?:local/)?lib/python"
    r"|\bCUDA\b|\bcuda:\d"
)
MAX_ENGINE_MESSAGE = 1000


class GatewayError(Exception):
    """Raised anywhere on the request path; the app turns it into an OpenAI-shaped response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> bytes:  # noqa: A002
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


INVALID_KEY = "Incorrect API key provided. You can find your API key in the Berth console."


def invalid_api_key() -> GatewayError:
    return GatewayError(401, INVALID_KEY, code="invalid_api_key")


def missing_api_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' or in an 'api-key' "
        "(or Anthropic's 'x-api-key') header.",
        code="invalid_api_key",
    )


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def engine_error(status: int, raw: bytes, *, request_id: str) -> bytes:
    """An engine's error answer as the client may see it, always in OpenAI's shape."""
    if status >= 500:
        logger.warning(
            "engine answered HTTP %s to request %s: %s",
            status,
            request_id,
            raw[:2000].decode("utf-8", "replace"),
        )
        return error_body(
            f"The model worker failed to process the request (request id {request_id}). Retry it; if it "
            "keeps failing, give the operator this request id.",
            type="server_error",
            code="upstream_error",
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    source = error if isinstance(error, dict) else data if isinstance(data, dict) else {}
    message = source.get("message")
    if message is None and isinstance(data, dict) and isinstance(data.get("detail"), str):
        message = data["detail"]
    if isinstance(message, str) and message.strip() and not _INTERNAL.search(message):
        kind, param, code = source.get("type"), source.get("param"), source.get("code")
        return error_body(
            message[:MAX_ENGINE_MESSAGE],
            type=kind if isinstance(kind, str) and kind else "invalid_request_error",
            param=param if isinstance(param, str) else None,
            code=code if isinstance(code, str) else None,
        )
    logger.warning(
        "engine answered HTTP %s to request %s: %s", status, request_id, raw[:2000].decode("utf-8", "replace")
    )
    return error_body(
        f"The model worker refused the request (HTTP {status}; request id {request_id}).",
        type="invalid_request_error",
        code="upstream_rejected",
    )
