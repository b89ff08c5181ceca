"""Running batches: validation, the lines through the gateway, and the output and error files.

A batch is worked on by one runner at a time: every step below holds a PostgreSQL session
advisory lock on the batch (``batch_lock``), so a second task for the same batch returns at once,
and a runner killed in any way (SIGKILL, OOM, a lost machine) loses the lock with its connection.
The beat task (``batches.tasks.tick``) finds active batches whose lock is free and sends them to a
runner again: that is how a batch resumes after a crash, how a cancel completes when no runner is
live, and how a batch past its 24 hours expires.

Lines go through the gateway, not straight to an engine, so they are routed, scaled from zero,
queued behind interactive traffic (tier ``batch``), metered and billed by the one code path every
request takes (``gateway/batch.py``). Each line is a POST to the batch's endpoint at
``BERTH_GATEWAY_INTERNAL_URL`` carrying the internal token, the tenant, the batch and the line's
own request id. Its result is written once (``UPDATE … WHERE status = 'pending'``, the batch's
counts in the same transaction); a line whose answer was lost with a killed runner runs again
under the same request id, and the usage consumer keeps one record per request id, so nothing is
billed twice and no line is lost.

What the gateway answers decides a line's fate: 200 → its response; a 4xx about the request (not
429) → the line's error, as the engine or the gateway worded it; 429 and 503 (a model still
scaling up from zero answers ``model_not_ready``), other 5xx, connection errors, and 401/403 (a
misconfigured token, a suspended tenant: never the line's fault) → the line is retried with backoff (``Retry-After`` honoured) until it gets an answer, the batch is cancelled or
it expires; a spent batch token budget (``insufficient_quota``) fails the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from django.conf import settings
from django.core.files import File as DjangoFile
from django.core.files.storage import storages
from django.db import connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from batches.models import Batch, BatchLine, BatchStatus, File, FilePurpose, LineStatus
from models_registry.models import LoraAdapter, Model

logger = logging.getLogger(__name__)

# pg advisory locks take two int4 keys: this class ("bert" in ASCII) and hashtext(batch id).
LOCK_CLASS = 0x62657274
MAX_ERRORS = 100  # validation errors reported (OpenAI lists the first ones too)
# Retried, never the line's fault: 401 (this worker's internal token is not the gateway's, a
# deployment error, logged), 403 (the tenant is suspended: its batch waits, or expires), 429, 5xx.
RETRY_STATUS = frozenset({401, 403, 429, 500, 502, 503, 504})
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
WRITE_EVERY = 0.05  # results are written in groups, at most this long after they arrive
POLL_SECONDS = 1.0  # how often a runner looks at its batch's status (cancel, expiry)

WAITING = "waiting"  # run()'s answer for a batch it could not work on (no internal token)
EXPIRED_ERROR = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}


# ---------------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def batch_lock(batch_id: str) -> Iterator[bool]:
    """Hold the batch's session advisory lock on this thread's connection; yields whether it did."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [LOCK_CLASS, batch_id])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [LOCK_CLASS, batch_id])


def has_live_runner(batch_id: str) -> bool:
    """Whether some process holds the batch's lock (a runner or a validation in progress).

    Read from ``pg_locks`` rather than by trying the lock, which would make a runner starting at
    that moment find the batch busy.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXISTS (
                SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND granted AND objsubid = 2
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND classid = %s::bigint::oid
                  AND objid = ((hashtext(%s)::bigint + 4294967296) %% 4294967296)::oid
            )
            """,
            [LOCK_CLASS, batch_id],
        )
        return bool(cursor.fetchone()[0])


def request_id(batch_id: str, index: int) -> str:
    """The request id a line is metered under: ``batch_<hex>_<index>`` (≤ 64 characters)."""
    return f"{batch_id}_{index}"


# ---------------------------------------------------------------------------------- validation


@dataclass
class _Problem:
    code: str
    message: str
    param: str | None
    line: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def _model_exists(tenant, name: str) -> bool:
    """The registry's answer for ``tenant``: another tenant's private model does not exist."""
    return (
        Model.objects.visible_to(tenant).filter(name=name).exists()
        or LoraAdapter.objects.usable_by(tenant).filter(served_name=name).exists()
    )


def _parse_lines(batch: Batch, raw_lines: Iterator[bytes]) -> tuple[list[BatchLine], list[_Problem], str]:
    lines: list[BatchLine] = []
    problems: list[_Problem] = []
    seen: set[str] = set()
    model = ""

    def problem(code: str, message: str, param: str | None, number: int | None) -> None:
        if len(problems) < MAX_ERRORS:
            problems.append(_Problem(code, message, param, number))

    for index, raw in enumerate(raw_lines):
        number = index + 1
        if not raw.strip():
            continue
        if len(lines) >= settings.BATCH_MAX_LINES:
            problem(
                "too_many_requests",
                f"The input file has more than {settings.BATCH_MAX_LINES} requests.",
                None,
                number,
            )
            break
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problem("invalid_json_line", "This line is not valid JSON.", None, number)
            continue
        if not isinstance(item, dict):
            problem("invalid_json_line", "This line is not a JSON object.", None, number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
            problem(
                "invalid_custom_id",
                "custom_id must be a non-empty string of at most 512 characters.",
                "custom_id",
                number,
            )
            continue
        if custom_id in seen:
            problem(
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} appears more than once; each line needs its own.",
                "custom_id",
                number,
            )
            continue
        seen.add(custom_id)
        if item.get("method") != "POST":
            problem("invalid_method", "method must be POST.", "method", number)
            continue
        if item.get("url") != batch.endpoint:
            problem(
                "invalid_url",
                f"url must be the batch's endpoint, {batch.endpoint}.",
                "url",
                number,
            )
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            problem("invalid_request", "body must be a JSON object with the request.", "body", number)
            continue
        line_model = body.get("model")
        if not isinstance(line_model, str) or not line_model:
            problem("missing_required_parameter", "body.model must be a model name.", "body.model", number)
            continue
        if not model:
            model = line_model
        elif line_model != model:
            problem(
                "mismatched_model",
                f"Every line of a batch must use the same model; this one uses {line_model!r}, "
                f"the first one {model!r}.",
                "body.model",
                number,
            )
            continue
        lines.append(
            BatchLine(
                batch=batch,
                index=index,
                custom_id=custom_id,
                body=body,
                request_id=request_id(batch.id, index),
            )
        )
    if not lines and not problems:
        problem("empty_file", "The input file has no requests.", None, None)
    if model and not problems and not _model_exists(batch.tenant, model):
        problem(
            "model_not_found",
            f"The model `{model}` does not exist or you do not have access to it.",
            "body.model",
            next((line.index + 1 for line in lines), None),
        )
    return lines, problems, model


def _read_input(batch: Batch) -> Iterator[bytes]:
    storage = storages["berth_files"]
    with storage.open(batch.input_file.storage_name, "rb") as handle:
        for raw in handle:
            yield raw.rstrip(b"\r\n")


def validate(batch_id: str) -> str:
    """Split a ``validating`` batch's input into lines, or fail it with OpenAI-shaped errors.

    Idempotent: a validation that runs again (its worker died) replaces the lines it wrote.
    Returns the status the batch is left in.
    """
    with batch_lock(batch_id) as acquired:
        if not acquired:
            return "busy"
        batch = Batch.objects.select_related("input_file", "tenant").get(pk=batch_id)
        if batch.status != BatchStatus.VALIDATING:
            return batch.status
        now = timezone.now()
        if now >= batch.expires_at:
            Batch.objects.filter(pk=batch.pk, status=BatchStatus.VALIDATING).update(
                status=BatchStatus.EXPIRED, expired_at=now
            )
            return BatchStatus.EXPIRED
        try:
            lines, problems, model = _parse_lines(batch, _read_input(batch))
        except (OSError, ValueError) as exc:
            logger.warning("batch %s: could not read its input file: %s", batch.id, exc)
            lines, problems, model = (
                [],
                [_Problem("invalid_file", "The input file could not be read.", "input_file_id", None)],
                "",
            )
        with transaction.atomic():
            current = Batch.objects.select_for_update().get(pk=batch.pk)
            if current.status != BatchStatus.VALIDATING:  # cancelled while validating
                return current.status
            BatchLine.objects.filter(batch=batch).delete()
            if problems:
                current.status = BatchStatus.FAILED
                current.failed_at = timezone.now()
                current.errors = [p.as_dict() for p in problems]
                current.save(update_fields=["status", "failed_at", "errors"])
                return current.status
            BatchLine.objects.bulk_create(lines, batch_size=1000)
            current.status = BatchStatus.IN_PROGRESS
            current.in_progress_at = timezone.now()
            current.model = model
            current.request_total = len(lines)
            current.request_completed = current.request_failed = 0
            current.save(
                update_fields=[
                    "status",
                    "in_progress_at",
                    "model",
                    "request_total",
                    "request_completed",
                    "request_failed",
                ]
            )
        return BatchStatus.IN_PROGRESS


# ---------------------------------------------------------------------------------- execution


@dataclass
class LineResult:
    line_id: int
    ok: bool
    status_code: int | None
    response: Any
    error: dict[str, Any] | None
    attempts: int


def _error_of(body: Any, status: int) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return {
            "code": str(error.get("code") or error.get("type") or f"http_{status}"),
            "message": str(error.get("message") or ""),
        }
    return {"code": f"http_{status}", "message": f"The request failed with HTTP {status}."}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Runner:
    """Runs one in-progress batch's pending lines until none is left, or it must stop."""

    def __init__(self, batch: Batch, *, deadline: float):
        self.batch = batch
        self.deadline = deadline  # monotonic: hand over to the next task then
        self.concurrency = settings.BATCH_CONCURRENCY
        self.stop = asyncio.Event()
        self.results: asyncio.Queue[LineResult] = asyncio.Queue()
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-db-{batch.id}")
        self.headers = {
            "Authorization": f"Bearer {settings.INTERNAL_TOKEN or ''}",
            "Content-Type": "application/json",
            "X-Berth-Tenant": str(batch.tenant_id),
            "X-Berth-Batch": batch.id,
        }
        self.written = 0

    async def _db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    # -- database (on the one executor thread) --

    def _pending(self, after: int, limit: int) -> list[tuple[int, int, str, dict]]:
        return list(
            BatchLine.objects.filter(batch_id=self.batch.id, status=LineStatus.PENDING, index__gt=after)
            .order_by("index")
            .values_list("id", "index", "request_id", "body")[:limit]
        )

    def _should_stop(self) -> bool:
        row = Batch.objects.filter(pk=self.batch.id).values("status", "expires_at").first()
        return row is None or row["status"] != BatchStatus.IN_PROGRESS or timezone.now() >= row["expires_at"]

    def _write(self, results: list[LineResult]) -> int:
        now = timezone.now()
        completed = failed = 0
        with transaction.atomic():
            for result in results:
                updated = BatchLine.objects.filter(pk=result.line_id, status=LineStatus.PENDING).update(
                    status=LineStatus.OK if result.ok else LineStatus.ERROR,
                    status_code=result.status_code,
                    response=result.response,
                    error=result.error,
                    attempts=F("attempts") + result.attempts,
                    completed_at=now,
                )
                if updated:
                    completed += result.ok
                    failed += not result.ok
            if completed or failed:
                Batch.objects.filter(pk=self.batch.id).update(
                    request_completed=F("request_completed") + completed,
                    request_failed=F("request_failed") + failed,
                )
        return completed + failed

    def _close_db(self) -> None:
        connections.close_all()

    # -- the loop --

    async def run(self) -> None:
        timeout = httpx.Timeout(settings.BATCH_REQUEST_TIMEOUT, connect=10.0)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        queue: asyncio.Queue[tuple[int, int, str, dict] | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        try:
            async with httpx.AsyncClient(
                base_url=settings.GATEWAY_INTERNAL_URL,
                timeout=timeout,
                limits=limits,
            ) as client:
                writer = asyncio.create_task(self._writer())
                watcher = asyncio.create_task(self._watch())
                workers = [asyncio.create_task(self._work(client, queue)) for _ in range(self.concurrency)]
                await self._feed(queue)
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
                watcher.cancel()
                await self.results.put(None)  # type: ignore[arg-type]
                await writer
        finally:
            await self._db(self._close_db)
            self.db.shutdown(wait=True)

    async def _feed(self, queue: asyncio.Queue) -> None:
        after = -1
        while not self.stop.is_set():
            page = await self._db(self._pending, after, 500)
            if not page:
                return
            for item in page:
                if self.stop.is_set():
                    return
                await queue.put(item)
            after = page[-1][1]

    async def _watch(self) -> None:
        while not self.stop.is_set():
            await asyncio.sleep(POLL_SECONDS)
            if time.monotonic() >= self.deadline or await self._db(self._should_stop):
                self.stop.set()

    async def _writer(self) -> None:
        done = False
        while not done:
            first = await self.results.get()
            if first is None:
                return
            await asyncio.sleep(WRITE_EVERY)
            group = [first]
            while not self.results.empty():
                item = self.results.get_nowait()
                if item is None:
                    done = True
                    break
                group.append(item)
            self.written += await self._db(self._write, group)

    async def _work(self, client: httpx.AsyncClient, queue: asyncio.Queue) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            if self.stop.is_set():
                continue
            result = await self._line(client, *item)
            if result is not None:
                await self.results.put(result)

    async def _line(self, client: httpx.AsyncClient, line_id: int, index: int, rid: str, body: dict):
        """One line to an answer; None when the batch must stop before it got one."""
        payload = dict(body)
        payload.pop("stream", None)
        payload.pop("stream_options", None)
        content = orjson.dumps(payload)
        headers = {**self.headers, "X-Berth-Request-Id": rid}
        attempts = 0
        delay = BACKOFF_FIRST
        while not self.stop.is_set():
            attempts += 1
            wait: float | None = None
            try:
                response = await client.post(self.batch.endpoint, content=content, headers=headers)
            except httpx.TransportError as exc:
                logger.info("batch %s line %s: gateway unreachable (%s); retrying", self.batch.id, index, exc)
            else:
                try:
                    answer = response.json()
                except ValueError:
                    answer = None
                status = response.status_code
                if status == 200:
                    return LineResult(line_id, True, 200, answer, None, attempts)
                error = _error_of(answer, status)
                if status not in RETRY_STATUS or error["code"] == "insufficient_quota":
                    return LineResult(line_id, False, status, answer, error, attempts)
                wait = _retry_after(response)
                if status == 401:
                    logger.error(
                        "batch %s: the gateway at %s refused the internal token (BERTH_INTERNAL_TOKEN "
                        "differs between the worker and the gateway?)",
                        self.batch.id,
                        settings.GATEWAY_INTERNAL_URL,
                    )
                logger.info(
                    "batch %s line %s: HTTP %s %s; retrying", self.batch.id, index, status, error["code"]
                )
            pause = min(BACKOFF_MAX, wait if wait is not None else delay) * random.uniform(0.8, 1.2)  # noqa: S311
            delay = min(BACKOFF_MAX, delay * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=pause)
        return None


# ---------------------------------------------------------------------------------- finishing


def _record_id(rid: str) -> str:
    return "batch_req_" + hashlib.sha256(rid.encode()).hexdigest()[:32]


def _output_line(line: BatchLine) -> dict[str, Any]:
    if line.status_code is not None:
        return {
            "id": _record_id(line.request_id),
            "custom_id": line.custom_id,
            "response": {
                "status_code": line.status_code,
                "request_id": line.request_id,
                "body": line.response,
            },
            "error": None,
        }
    return {
        "id": _record_id(line.request_id),
        "custom_id": line.custom_id,
        "response": None,
        "error": line.error,
    }


def _write_file(batch: Batch, purpose: str, status: str) -> File | None:
    """The lines of ``status`` as JSONL in input order, stored; None when there are none."""
    storage = storages["berth_files"]
    digest = hashlib.sha256()
    size = 0
    with tempfile.TemporaryFile() as handle:
        query = BatchLine.objects.filter(batch=batch, status=status).order_by("index")
        for line in query.iterator(chunk_size=1000):
            raw = orjson.dumps(_output_line(line)) + b"\n"
            handle.write(raw)
            digest.update(raw)
            size += len(raw)
        if not size:
            return None
        handle.seek(0)
        row = File(tenant_id=batch.tenant_id, purpose=purpose, bytes=size, sha256=digest.hexdigest())
        row.filename = f"{batch.id}_{'output' if purpose == FilePurpose.BATCH_OUTPUT else 'error'}.jsonl"
        row.storage_name = storage.save(f"{batch.tenant_id}/{row.id}", DjangoFile(handle))
    return row


def _finish(batch_id: str, final: str, at_field: str) -> None:
    """Write the output and error files and move the batch to ``final``."""
    batch = Batch.objects.get(pk=batch_id)
    output = batch.output_file or _write_file(batch, FilePurpose.BATCH_OUTPUT, LineStatus.OK)
    errors = batch.error_file or _write_file(batch, FilePurpose.BATCH_ERROR, LineStatus.ERROR)
    with transaction.atomic():
        for row in (output, errors):
            if row is not None and row._state.adding:
                row.save()
        Batch.objects.filter(pk=batch_id).update(
            output_file=output, error_file=errors, status=final, **{at_field: timezone.now()}
        )
    logger.info("batch %s %s", batch_id, final)


def _expire(batch_id: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if batch.status not in (BatchStatus.IN_PROGRESS, BatchStatus.VALIDATING):
            return
        failed = BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).update(
            status=LineStatus.ERROR, error=EXPIRED_ERROR, completed_at=now
        )
        Batch.objects.filter(pk=batch_id).update(request_failed=F("request_failed") + failed)
    _finish(batch_id, BatchStatus.EXPIRED, "expired_at")


def _settle(batch_id: str) -> str:
    """Move a batch that is not running lines on: finalize, cancel or expire it (lock held)."""
    batch = Batch.objects.get(pk=batch_id)
    now = timezone.now()
    if batch.status == BatchStatus.CANCELLING:
        _finish(batch_id, BatchStatus.CANCELLED, "cancelled_at")
    elif batch.status == BatchStatus.FINALIZING:
        _finish(batch_id, BatchStatus.COMPLETED, "completed_at")
    elif batch.status == BatchStatus.IN_PROGRESS:
        pending = BatchLine.objects.filter(batch=batch, status=LineStatus.PENDING).exists()
        if not pending:
            Batch.objects.filter(pk=batch_id, status=BatchStatus.IN_PROGRESS).update(
                status=BatchStatus.FINALIZING, finalizing_at=now
            )
            return _settle(batch_id)  # finalizing now, or cancelling if a cancel came first
        if now >= batch.expires_at:
            _expire(batch_id)
    return Batch.objects.values_list("status", flat=True).get(pk=batch_id)


def run(batch_id: str, *, slice_seconds: float | None = None) -> str:
    """Work on a batch for up to ``slice_seconds``; returns its status, ``busy`` or ``waiting``.

    ``in_progress`` afterwards means lines are left (the slice ended): the caller sends it again.
    """
    with batch_lock(batch_id) as acquired:
        if not acquired:
            return "busy"
        batch = Batch.objects.filter(pk=batch_id).first()
        if batch is None:
            return "missing"
        if batch.status == BatchStatus.VALIDATING:
            return "validating"
        if not settings.INTERNAL_TOKEN:
            logger.error(
                "batch %s waits: BERTH_INTERNAL_TOKEN is not set, the gateway refuses batch lines", batch_id
            )
        elif batch.status == BatchStatus.IN_PROGRESS and timezone.now() < batch.expires_at:
            seconds = slice_seconds if slice_seconds is not None else settings.BATCH_SLICE_SECONDS
            runner = Runner(batch, deadline=time.monotonic() + seconds)
            asyncio.run(runner.run())
            logger.info("batch %s: %s lines written in this slice", batch_id, runner.written)
        status = _settle(batch_id)
        if status == BatchStatus.IN_PROGRESS and not settings.INTERNAL_TOKEN:
            return WAITING  # not sent again at once: the beat's next tick tries again
        return status


def active() -> list[tuple[str, str]]:
    """(id, status) of every batch a runner may still have to work on."""
    return list(
        Batch.objects.filter(
            status__in=[
                BatchStatus.VALIDATING,
                BatchStatus.IN_PROGRESS,
                BatchStatus.FINALIZING,
                BatchStatus.CANCELLING,
            ]
        ).values_list("id", "status")
    )
