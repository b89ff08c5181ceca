"""How the engine refuses a request or reports a failure, in the shape OpenAI clients parse.

``InputError`` is raised wherever a request turns out to be unservable (the routes, the backends)
and becomes a 4xx. Any other exception is an internal failure: its text stays in the engine log,
and the caller gets a generic message carrying a request id that both logs share.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import Request
    from pydantic import ValidationError


class InputError(ValueError):
    """A request the engine cannot take; the server answers with ``status`` and this message."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def error_id(request: Request) -> str:
    """The gateway's ``X-Request-Id`` when it is a plain token, so both logs share one id."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else f"engine-{uuid.uuid4().hex}"


def internal_message(error_id: str) -> str:
    return f"The engine could not complete this request (request id {error_id}). Please try again."


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """The first problem, phrased like vLLM's 400s, and the top-level field it concerns."""
    first = exc.errors()[0]
    loc = first.get("loc", ())
    where = ".".join(str(part) for part in loc)
    message = first.get("msg", "invalid value")
    return (f"{where}: {message}" if where else message), (str(loc[0]) if loc else None)
