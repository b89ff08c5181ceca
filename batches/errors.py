"""One error type for the Files and Batch APIs' rules, rendered by each surface in its own shape.

The services (``batches.files``, ``batches.submission``) raise ``ApiError``; the internal views
answer it as OpenAI's error JSON, the console shows ``message`` next to the form, the management
API as a DRF error.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


def not_found(kind: str, ident: str, *, param: str | None = None) -> ApiError:
    """Unknown, deleted and another tenant's objects all answer this same 404."""
    return ApiError(404, f"No such {kind}: '{ident[:100]}'.", param=param, code=f"{kind}_not_found")
