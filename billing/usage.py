"""Usage ingestion: the gateway's Redis stream → ``UsageRecord`` rows.

The gateway appends one usage event per request to the usage stream (``contract.usage``).
Consumers in the group ``billing`` read batches, write them with ONE statement per batch —
``INSERT … ON CONFLICT (request_id) DO NOTHING``, so a re-delivered event changes nothing —
and only after the commit ``XACK`` the
entries. Entries a dead consumer read but never acknowledged are taken over with ``XAUTOCLAIM``
once idle for ``claim_idle_ms`` (Redis ≥ 6.2).

The stream is trimmed (``XTRIM MINID``) only below what EVERY consumer group has acknowledged,
never by deleting our own entries: another group (an export, an audit consumer) may not have read
them yet. Faults are normal: while PostgreSQL or Redis is down the loop backs off and logs, and
after an error it first re-processes its OWN pending entries (what it read but could not write or
acknowledge), so nothing waits for ``XAUTOCLAIM``'s idle time and nothing is doubled.

Run as the ``usage`` role (``manage.py consume_usage``, berth/roles.py), several processes sharing
the group; ``consume_batch`` is also what tests and the bench call directly. ``run`` serves its lag
to Prometheus (``berth_usage_*``, behind ``BERTH_INTERNAL_TOKEN``) and ``/healthz``/``/readyz``
for the probes on its own port.
"""

from __future__ import annotations

import hmac
import logging
import os
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import orjson
import redis
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from berth.redis import get_redis, names
from billing import checkpoints
from contract.redis_names import USAGE_GROUP
from contract.usage import EVENT_FIELD, MalformedUsageEvent, UsageEvent

logger = logging.getLogger(__name__)

GROUP = USAGE_GROUP
CLAIM_IDLE_MS = 60_000
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HOUSEKEEPING_SECONDS = 5.0  # trim the stream and refresh the lag gauges at most this often
READY_WITHIN_SECONDS = 60.0
FORGET_IDLE_MS = 86_400_000  # consumers with nothing pending, idle this long, leave the group  # /readyz: a batch (or an empty read) succeeded this recently

# The batch travels as ONE JSON array parameter (psycopg adapts a str in C; thirteen Python lists
# cost it more than the insert itself) and PostgreSQL unpacks it with json_to_recordset.
_INSERT = """
INSERT INTO billing_usagerecord (
    request_id, tenant_id, api_key_id, model, endpoint, prompt_tokens, completion_tokens, cached_tokens,
    status, http_status, latency_ms, ttft_ms, worker_id, usage_source, service_tier, queue_ms, batch_id,
    occurred_at, recorded_at
)
SELECT r.id, r.t, r.k, r.m, coalesce(r.ep, ''), coalesce(r.p, 0), coalesce(r.c, 0), coalesce(r.ct, 0),
       coalesce(r.s, 'ok'), coalesce(r.h, 0), coalesce(r.l, 0), r.f, coalesce(r.w, ''),
       coalesce(r.u, 'engine'), coalesce(r.st, 'default'), coalesce(r.q, 0), coalesce(r.b, ''),
       to_timestamp(r.ts / 1000.0), now()
FROM json_to_recordset(%s::json) AS r(
    id text, t uuid, k uuid, m text, ep text, p int, c int, ct int, s text, h int, l int, f int, w text, u text,
    st text, q int, b text, ts bigint
)
ON CONFLICT (request_id) DO NOTHING
"""


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ensure_group(client: redis.Redis | None = None) -> None:
    client = client or get_redis()
    try:
        client.xgroup_create(names().usage_stream(), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def write_events(events: list[dict]) -> int:
    """Insert a batch (idempotent by request id); returns rows inserted."""
    if not events:
        return 0
    # Within one batch the same request id may appear twice (a re-delivery): keep the first.
    unique: dict[str, dict] = {}
    for event in events:
        unique.setdefault(event["id"], event)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_INSERT, [orjson.dumps(list(unique.values())).decode()])
        return cursor.rowcount


def _decode_entries(entries) -> tuple[list[str], list[dict], list[dict]]:
    """Entry ids, valid events, and the fields of malformed ones (parked, never written)."""
    ids, events, malformed = [], [], []
    for entry_id, fields in entries or ():
        if fields is None:  # deleted while pending
            ids.append(entry_id)
            continue
        ids.append(entry_id)
        try:
            event = UsageEvent.from_fields(fields)
        except MalformedUsageEvent as exc:
            # Events PostgreSQL could never take are parked in the dead-letter stream, not dropped.
            logger.error(
                "malformed usage event %s (%s): %r; kept in %s",
                entry_id,
                exc,
                fields,
                names().usage_dead_letter(),
            )
            raw = fields.get(EVENT_FIELD) if isinstance(fields, dict) else None
            malformed.append({EVENT_FIELD: str(raw)[:65536], "error": "malformed"})
            continue
        events.append(event.to_wire())
    return ids, events, malformed


def _write_or_dead_letter(events: list[dict], *, client: redis.Redis) -> None:
    """Write a batch; if PostgreSQL rejects its content, write event by event and park the refused.

    A connection problem (OperationalError, InterfaceError) propagates: the batch stays pending and
    is retried. Only an event that PostgreSQL itself refuses is moved to the dead-letter stream, so
    one bad event can never block the stream behind it.
    """
    try:
        write_events(events)
    except (IntegrityError, DataError):
        logger.exception("batch of %s usage events refused; writing them one by one", len(events))
        for event in events:
            try:
                write_events([event])
            except (IntegrityError, DataError) as exc:
                logger.error("usage event %s refused by PostgreSQL (%s); kept in %s", event.get("id"), exc,
                             names().usage_dead_letter())  # fmt: skip
                client.xadd(
                    names().usage_dead_letter(), {EVENT_FIELD: orjson.dumps(event), "error": str(exc)[:500]}
                )
                METRICS.errors.labels("refused").inc()


def consume_batch(
    *,
    consumer: str | None = None,
    count: int = 5000,
    block_ms: int | None = 1000,
    claim_idle_ms: int = CLAIM_IDLE_MS,
    client: redis.Redis | None = None,
    own_pending: bool = False,
) -> int:
    """Process one batch; returns events handled (0: nothing to do).

    With ``own_pending`` it reads this consumer's own unacknowledged entries (``XREADGROUP … 0``),
    which is what the loop does after an error; else reclaimed entries of dead consumers first,
    then new ones.
    """
    client = client or get_redis()
    consumer = consumer or consumer_name()
    stream = names().usage_stream()
    entries: list = []
    if own_pending:
        pending = cast(list, client.xreadgroup(GROUP, consumer, {stream: "0"}, count=count))
        for _stream, stream_entries in pending or ():
            entries.extend(stream_entries)
    else:
        _, claimed = client.xautoclaim(
            stream, GROUP, consumer, min_idle_time=claim_idle_ms, start_id="0-0", count=count
        )[:2]
        entries = list(claimed or [])
        if not entries:
            response = cast(
                list, client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count, block=block_ms)
            )
            for _stream, stream_entries in response or ():
                entries.extend(stream_entries)
    if not entries:
        return 0
    ids, events, malformed = _decode_entries(entries)
    _write_or_dead_letter(events, client=client)
    for fields in malformed:
        client.xadd(names().usage_dead_letter(), fields)
        METRICS.errors.labels("refused").inc()
    # Acknowledge only after the commit: a crash before this line means re-delivery, which the
    # unique request id turns into a no-op. No XDEL: other groups may not have read these yet.
    client.xack(stream, GROUP, *ids)
    METRICS.consumed.inc(len(events))
    return len(ids)


def _id_key(entry_id: str | bytes) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)).partition("-")
    return int(ms), int(seq or 0)


def acknowledged_floor(client: redis.Redis | None = None) -> str | None:
    """The smallest stream id some group still needs: its oldest pending entry, else the entry
    after its last delivered one. Everything below it is acknowledged by every group."""
    client = client or get_redis()
    stream = names().usage_stream()
    floors: list[tuple[int, int]] = []
    for group in client.xinfo_groups(stream):
        name = group["name"]
        if group.get("pending"):
            oldest = client.xpending(stream, name)["min"]
            floors.append(_id_key(oldest))
        else:
            ms, seq = _id_key(group.get("last-delivered-id") or "0-0")
            floors.append((ms, seq + 1))  # MINID keeps ids >= floor: the next one after delivered
    if not floors:
        return None  # no group at all: nobody has acknowledged anything
    ms, seq = min(floors)
    return f"{ms}-{seq}"


def trim_acknowledged(client: redis.Redis | None = None) -> int:
    """``XTRIM MINID`` to what every group has acknowledged; returns entries removed."""
    client = client or get_redis()
    floor = acknowledged_floor(client)
    if floor is None or floor in ("0-0", "0-1"):
        return 0
    return client.xtrim(names().usage_stream(), minid=floor, approximate=False)


# --------------------------------------------------------------------------- the process


class _Metrics:
    """The consumer's own registry (not the global one, which the gateway shares in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stream_length = Gauge(
            "berth_usage_stream_length",
            "Entries in the usage stream (not yet trimmed).",
            registry=self.registry,
        )
        self.pending = Gauge(
            "berth_usage_pending", "Entries delivered to the billing group but not acknowledged.",
            registry=self.registry,
        )  # fmt: skip
        self.oldest_pending_age = Gauge(
            "berth_usage_oldest_pending_age_seconds",
            "Age of the oldest entry the billing group has read but not yet written (0: none).",
            registry=self.registry,
        )
        self.oldest_unacked_age = Gauge(
            "berth_usage_oldest_unacked_age_seconds",
            "Age of the oldest usage event not yet in PostgreSQL, read or not (0: none): the lag.",
            registry=self.registry,
        )
        self.consumed = Counter(
            "berth_usage_events_consumed", "Usage events written to PostgreSQL (re-deliveries included).",
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "berth_usage_errors", "Failed loop turns, by cause.", ["kind"], registry=self.registry
        )
        self.last_success = Gauge(
            "berth_usage_last_success_timestamp_seconds", "When a loop turn last succeeded.",
            registry=self.registry,
        )  # fmt: skip
        for kind in ("database", "redis", "refused"):
            self.errors.labels(kind)
        self.turned_at = time.monotonic()  # liveness: the loop turns, even while backing off
        self.succeeded_at = 0.0  # readiness: PostgreSQL and Redis both answered

    def refresh(self, client: redis.Redis) -> None:
        stream = names().usage_stream()
        now_ms = time.time() * 1000
        self.stream_length.set(client.xlen(stream))
        summary: Any = client.xpending(stream, GROUP)
        self.pending.set(summary["pending"])
        oldest_pending = summary["min"] if summary["pending"] else None
        self.oldest_pending_age.set(
            max(0.0, (now_ms - _id_key(oldest_pending)[0]) / 1000) if oldest_pending else 0.0
        )
        # The oldest event not in PostgreSQL: the oldest pending one, or the first never delivered.
        candidates = [_id_key(oldest_pending)] if oldest_pending else []
        last = next(
            (g["last-delivered-id"] for g in client.xinfo_groups(stream) if g["name"] == GROUP), "0-0"
        )
        undelivered = cast(list, client.xrange(stream, min=f"({last}", count=1))  # the first after it
        if undelivered:
            candidates.append(_id_key(undelivered[0][0]))
        self.oldest_unacked_age.set(max(0.0, (now_ms - min(candidates)[0]) / 1000) if candidates else 0.0)


METRICS = _Metrics()


def _authorized(header: str) -> bool:
    """/metrics takes the same bearer token as /internal/* (open only in a DEBUG start-up)."""
    token = settings.INTERNAL_TOKEN
    if not token:
        return settings.INTERNAL_OPEN_WITHOUT_TOKEN
    return hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - probes every few seconds: not worth a line
        pass

    def do_GET(self):  # noqa: N802
        now = time.monotonic()
        if self.path == "/metrics" and not _authorized(self.headers.get("Authorization", "")):
            body, status, content_type = b"unauthorized\n", 401, "text/plain"
        elif self.path == "/metrics":
            body, status, content_type = generate_latest(METRICS.registry), 200, CONTENT_TYPE_LATEST
        elif self.path == "/healthz":  # liveness: the loop turns (backing off during an outage is fine)
            ok = now - METRICS.turned_at < BACKOFF_MAX * 2 + 30
            body, status, content_type = (b"ok\n" if ok else b"stuck\n"), (200 if ok else 503), "text/plain"
        elif self.path == "/readyz":  # readiness: it is consuming
            ok = now - METRICS.succeeded_at < READY_WITHIN_SECONDS
            body, status, content_type = (
                (b"ok\n" if ok else b"not consuming\n"),
                (200 if ok else 503),
                "text/plain",
            )
        else:
            body, status, content_type = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_metrics(*, host: str = "0.0.0.0", port: int) -> ThreadingHTTPServer:  # noqa: S104 - probes and Prometheus reach the pod
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="usage-metrics", daemon=True).start()
    logger.info("usage consumer metrics on %s:%s (/metrics, /healthz, /readyz)", host, server.server_port)
    return server


def forget_idle_consumers(client: redis.Redis, *, idle_ms: int = FORGET_IDLE_MS) -> int:
    """Drop consumers that hold nothing and were idle a day: every restarted pod or container adds
    a name (host:pid) to the group. One still alive is simply re-created by its next read."""
    removed = 0
    for consumer in client.xinfo_consumers(names().usage_stream(), GROUP):
        if consumer["pending"] == 0 and consumer["idle"] >= idle_ms:
            removed += client.xgroup_delconsumer(names().usage_stream(), GROUP, consumer["name"]) == 0
    return removed


def _housekeeping(client: redis.Redis) -> None:
    """Every few seconds: trim what every group acknowledged, refresh the lag gauges."""
    trim_acknowledged(client)
    forget_idle_consumers(client)
    METRICS.refresh(client)
    checkpoints.bill_lost_streams(client=client)  # streams of a gateway that died (billing/checkpoints.py)


def run(
    *,
    count: int = 5000,
    stop_after: float | None = None,
    stop: threading.Event | None = None,
    metrics_port: int | None = None,
    block_ms: int = 1000,
) -> None:
    """The consumer process's loop (``manage.py consume_usage``): runs until ``stop`` is set."""
    stop = stop or threading.Event()
    client = get_redis()
    consumer = consumer_name()
    server = (
        serve_metrics(host=settings.USAGE_METRICS_HOST, port=metrics_port)
        if metrics_port is not None
        else None
    )
    logger.info("usage consumer %s reading %s", consumer, names().usage_stream())
    started = time.monotonic()
    # At start, first what this consumer name read before (a restarted container keeps its name).
    own_pending, group_ready, failures, housekept = True, False, 0, 0.0
    error: Exception
    try:
        while not stop.is_set() and (stop_after is None or time.monotonic() - started < stop_after):
            METRICS.turned_at = time.monotonic()
            try:
                if not group_ready:
                    ensure_group(client)
                    group_ready = True
                handled = consume_batch(
                    consumer=consumer, count=count, client=client, own_pending=own_pending, block_ms=block_ms
                )
                if own_pending and handled == 0:
                    own_pending = False  # caught up on our own entries: back to new ones
                if time.monotonic() - housekept >= HOUSEKEEPING_SECONDS:
                    _housekeeping(client)
                    housekept = time.monotonic()
                if failures:
                    logger.warning(
                        "usage consumer %s recovered after %s failed attempt(s)", consumer, failures
                    )
                failures = 0
                METRICS.succeeded_at = time.monotonic()
                METRICS.last_success.set_to_current_time()
                continue
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                kind, error = "redis", exc
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc) and "no such key" not in str(exc).lower():
                    raise
                # Redis lost the stream (flushed, restarted without persistence): recreate the group.
                group_ready = False
                continue
            except DatabaseError as exc:  # PostgreSQL down, restarting, or the connection was cut
                kind, error = "database", exc
            finally:
                if not connection.in_atomic_block:  # (a test's transaction) — else drop a stale connection
                    connection.close_if_unusable_or_obsolete()
            # Nothing was acknowledged: what we read stays in our pending list, retried first.
            failures += 1
            own_pending = True
            METRICS.errors.labels(kind).inc()
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 10)) * random.uniform(0.8, 1.2)  # noqa: S311
            logger.warning(
                "usage consumer: %s unavailable (%s); retry %s in %.1fs", kind, error, failures, delay
            )
            if kind == "database" and not connection.in_atomic_block:
                connection.close()
            stop.wait(delay)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
