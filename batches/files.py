"""The Files API's rules: who may upload what, size and quota limits, and the batch input check.

Uploads of purpose ``batch`` are checked as JSONL when they arrive, so a tenant learns about a bad
line from the upload's 400 (with line numbers) instead of from a batch that fails minutes later:
each line a JSON object with a string ``custom_id`` (unique in the file), ``method`` ``POST``,
``url`` one of the batch endpoints (the same on every line), and a ``body`` object naming a
``model`` (the same on every line: OpenAI's one-model-per-batch rule). Blank lines at the end are
ignored; a blank line between requests is an error, because line numbers are what the runner's
``BatchLine.index`` and the error file refer to.

``batch_output`` and ``batch_error`` files are written by the runner; tenants read and delete them
but cannot upload them. Every lookup is scoped to the tenant: another tenant's file id answers the
same 404 as one that never existed. Deleting removes the bytes and keeps the row (a batch may
still name it), hidden from every answer.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import IO, Any

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from batches import storage
from batches.errors import ApiError, not_found
from batches.models import BatchEndpoint, BatchStatus, File, FilePurpose

logger = logging.getLogger(__name__)

UPLOAD_PURPOSES = (FilePurpose.BATCH.value,)
RUNNER_PURPOSES = (FilePurpose.BATCH_OUTPUT.value, FilePurpose.BATCH_ERROR.value)
SHOWN_ERRORS = 10
MAX_CUSTOM_ID = 512
MAX_FILENAME = 255


def live_files(tenant: Any) -> QuerySet[File]:
    return File.objects.filter(tenant=tenant, deleted_at__isnull=True)


def get_file(*, tenant: Any, file_id: str) -> File:
    file = live_files(tenant).filter(pk=file_id).first()
    if file is None:
        raise not_found("file", file_id)
    return file


# --------------------------------------------------------------------------- upload


def check_purpose(purpose: object) -> str:
    if purpose is None or purpose == "":
        raise ApiError(
            400, "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
        )
    if purpose in RUNNER_PURPOSES:
        raise ApiError(
            400,
            f"Files of purpose '{purpose}' are written by batches; upload input files with purpose 'batch'.",
            param="purpose",
            code="invalid_value",
        )
    if purpose not in UPLOAD_PURPOSES:
        raise ApiError(
            400,
            f"Invalid value for 'purpose': '{str(purpose)[:100]}'. This server accepts 'batch' only.",
            param="purpose",
            code="invalid_value",
        )
    return str(purpose)


def _too_large(size: int) -> ApiError:
    return ApiError(
        413,
        f"The file is {size} bytes; the limit is {settings.FILES_MAX_BYTES} bytes.",
        param="file",
        code="file_too_large",
    )


def check_size(size: int) -> None:
    if size > settings.FILES_MAX_BYTES:
        raise _too_large(size)
    if size == 0:
        raise ApiError(400, "The file is empty.", param="file", code="invalid_file_format")


def check_quota(*, tenant: Any, size: int) -> None:
    used = live_files(tenant).aggregate(count=Count("id"), total=Sum("bytes"))
    if used["count"] + 1 > settings.FILES_MAX_PER_TENANT:
        raise ApiError(
            400,
            f"Your organization has {used['count']} files, the most it may store. Delete some first.",
            param="file",
            code="file_quota_exceeded",
        )
    if (used["total"] or 0) + size > settings.FILES_MAX_TENANT_BYTES:
        raise ApiError(
            400,
            f"Your organization's files would take more than {settings.FILES_MAX_TENANT_BYTES} bytes. "
            "Delete some first.",
            param="file",
            code="file_quota_exceeded",
        )


def _line_problem(line: Any, seen: dict[str, int], first: dict[str, Any]) -> str | None:
    """What is wrong with one decoded line of a batch input, or None."""
    if not isinstance(line, dict):
        return "must be a JSON object"
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "'custom_id' must be a non-empty string"
    if len(custom_id) > MAX_CUSTOM_ID:
        return f"'custom_id' is longer than {MAX_CUSTOM_ID} characters"
    if custom_id in seen:
        return f"'custom_id' {custom_id[:100]!r} is also on line {seen[custom_id]}"
    if line.get("method") != "POST":
        return "'method' must be \"POST\""
    url = line.get("url")
    if url not in BatchEndpoint.values:
        return f"'url' must be one of {', '.join(BatchEndpoint.values)}"
    body = line.get("body")
    if not isinstance(body, dict):
        return "'body' must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "'body.model' must be a non-empty string"
    if "url" in first and url != first["url"]:
        return f"'url' {url} differs from line {first['line']}'s {first['url']} (one endpoint per batch)"
    if "model" in first and model != first["model"]:
        return f"'body.model' {model[:100]!r} differs from line {first['line']}'s {first['model'][:100]!r} (one model per batch)"
    return None


def check_batch_jsonl(lines: Iterable[bytes], *, max_requests: int | None = None) -> tuple[int, str]:
    """Check a batch input file; return (requests, sha256 hex) or raise a 400 naming lines."""
    max_requests = max_requests or settings.BATCH_MAX_REQUESTS
    digest = hashlib.sha256()
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    first: dict[str, Any] = {}
    blanks: list[int] = []
    requests = 0
    number = 0
    for raw in lines:
        digest.update(raw)
        number += 1
        if not raw.strip():
            blanks.append(number)
            continue
        problems.extend((blank, "is empty") for blank in blanks)
        blanks.clear()
        requests += 1
        if requests > max_requests:
            problems.append(
                (number, f"the file has more than {max_requests} requests, the most one batch takes")
            )
            break
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problems.append((number, "is not valid JSON (UTF-8)"))
            continue
        problem = _line_problem(line, seen, first)
        if problem is not None:
            problems.append((number, problem))
            continue
        seen[line["custom_id"]] = number
        if not first:
            first.update(line=number, url=line["url"], model=line["body"]["model"])
    if not problems and requests == 0:
        raise ApiError(400, "The file has no requests.", param="file", code="invalid_file_format")
    if problems:
        shown = problems[:SHOWN_ERRORS]
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        text = "; ".join(f"line {n}: {p}" for n, p in shown)
        raise ApiError(
            400,
            f"The file is not a valid batch input (JSONL): {text}{more}.",
            param="file",
            code="invalid_file_format",
            extra={"lines": [{"line": n, "message": p} for n, p in shown], "error_count": len(problems)},
        )
    return requests, digest.hexdigest()


def _lines(content: IO[bytes]) -> Iterable[bytes]:
    content.seek(0)
    yield from content  # a binary file iterates by line (b"\n"), endings kept


def upload_file(
    *, tenant: Any, purpose: object, content: IO[bytes], size: int, filename: str, api_key_id: Any = None
) -> File:
    """Check and store an upload; the row is created only once the bytes are stored."""
    purpose = check_purpose(purpose)
    check_size(size)
    check_quota(tenant=tenant, size=size)
    _, sha256 = check_batch_jsonl(_lines(content))
    content.seek(0)
    file = File(
        tenant=tenant,
        purpose=purpose,
        filename=(filename or "upload.jsonl").replace("/", "_").replace("\\", "_")[:MAX_FILENAME],
        bytes=size,
        sha256=sha256,
        api_key_id=api_key_id,
    )
    file.storage_name = storage.save(tenant_id=tenant.pk, file_id=file.id, content=content)
    try:
        file.save(force_insert=True)
    except Exception:
        storage.delete(file.storage_name)
        raise
    logger.info("tenant %s uploaded %s (%s bytes, purpose %s)", tenant.pk, file.id, size, purpose)
    return file


# --------------------------------------------------------------------------- list, delete


def parse_limit(raw: object, *, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise ApiError(
            400,
            f"Invalid 'limit': {str(raw)[:50]!r}. It must be an integer from 1 to {maximum}.",
            param="limit",
            code="invalid_value",
        )
    return value


def page(
    queryset: QuerySet[Any], *, after: object, limit: int, order: str, kind: str
) -> tuple[list[Any], bool]:
    """A cursor page over (created_at, id): rows after the row ``after`` names, in ``order``."""
    descending = order == "desc"
    if after:
        anchor = queryset.filter(pk=str(after)).values("created_at", "pk").first()
        if anchor is None:
            raise not_found(kind, str(after), param="after")
        if descending:
            cond = Q(created_at__lt=anchor["created_at"]) | Q(
                created_at=anchor["created_at"], pk__lt=anchor["pk"]
            )
        else:
            cond = Q(created_at__gt=anchor["created_at"]) | Q(
                created_at=anchor["created_at"], pk__gt=anchor["pk"]
            )
        queryset = queryset.filter(cond)
    ordering = ("-created_at", "-pk") if descending else ("created_at", "pk")
    rows = list(queryset.order_by(*ordering)[: limit + 1])
    return rows[:limit], len(rows) > limit


def list_files(
    *, tenant: Any, purpose: object = None, limit: object = None, after: object = None, order: object = None
) -> tuple[list[File], bool]:
    files = live_files(tenant)
    if purpose:
        if purpose not in FilePurpose.values:
            raise ApiError(
                400,
                f"Invalid 'purpose': {str(purpose)[:100]!r}. One of {', '.join(FilePurpose.values)}.",
                param="purpose",
                code="invalid_value",
            )
        files = files.filter(purpose=purpose)
    order = order or "desc"
    if order not in ("asc", "desc"):
        raise ApiError(400, "Invalid 'order': use 'asc' or 'desc'.", param="order", code="invalid_value")
    return page(
        files,
        after=after,
        limit=parse_limit(limit, default=10_000, maximum=10_000),
        order=str(order),
        kind="file",
    )


def delete_file(*, tenant: Any, file_id: str) -> File:
    with transaction.atomic():
        file = live_files(tenant).select_for_update().filter(pk=file_id).first()
        if file is None:
            raise not_found("file", file_id)
        validating = file.batches.filter(status=BatchStatus.VALIDATING).values_list("pk", flat=True).first()
        if validating is not None:
            raise ApiError(
                409,
                f"The file is the input of batch {validating}, which is still being validated. "
                "Delete it once the batch is in progress.",
                code="file_in_use",
            )
        file.deleted_at = timezone.now()
        file.save(update_fields=["deleted_at"])
        name = file.storage_name
        transaction.on_commit(lambda: storage.delete(name))
    logger.info("tenant %s deleted %s", tenant.pk, file.id)
    return file
