"""The Files and Batch APIs' objects exactly as OpenAI answers them (the ``openai`` SDK's types).

One builder per object, used by the API views, the management API, the console and the runner, so
every surface shows a batch the same way. Times are Unix seconds; unset ones are ``null``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from batches.models import Batch, File


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_object(file: File) -> dict[str, Any]:
    return {
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": _ts(file.created_at),
        "expires_at": _ts(file.expires_at),
        "filename": file.filename,
        "purpose": file.purpose,
        # Deprecated in OpenAI's API but still in the SDK's type: a stored file is "processed".
        "status": "processed",
        "status_details": None,
    }


def batch_object(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model or None,
        # null until validation found errors, as OpenAI answers.
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {
            "total": batch.request_total,
            "completed": batch.request_completed,
            "failed": batch.request_failed,
        },
        "metadata": batch.metadata,
    }


def list_object(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page: the SDK pages on ``has_more`` and the last item's id."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
