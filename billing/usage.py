"""Usage ingestion: the gateway's Redis stream → ``UsageRecord`` rows and hourly rollups.

The gateway appends one JSON event per request to ``<prefix>usage`` (see ``gateway/metering.py``).
Consumers in the group ``billing`` read batches, write them with ONE statement per batch —
``INSERT … ON CONFLICT (request_id) DO NOTHING RETURNING`` feeding the rollup upsert, so a
re-delivered event changes neither records nor rollups — and only after the commit ``XACK`` and
``XDEL`` the entries. Entries a dead consumer read but never acknowledged are taken over with
``XAUTOCLAIM`` once idle for ``claim_idle_ms`` (Redis ≥ 6.2).

Run as a process by ``manage.py up`` (``manage.py consume_usage``); ``consume_batch`` is also
what tests and the bench call directly.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import orjson
import redis
from django.db import connection, transaction

from berth.redis import get_redis, rkey
from billing import checkpoints
from billing.models import UsageSource

logger = logging.getLogger(__name__)

STREAM = "usage"
GROUP = "billing"
CLAIM_IDLE_MS = 60_000
USAGE_SOURCES = frozenset(UsageSource.values)

# The batch travels as ONE JSON array parameter (psycopg adapts a str in C; thirteen Python lists
# cost it more than the insert itself) and PostgreSQL unpacks it with json_to_recordset.
_INSERT = """
WITH ins AS (
    INSERT INTO billing_usagerecord (
        request_id, tenant_id, api_key_id, model, endpoint, prompt_tokens, completion_tokens,
        status, http_status, latency_ms, ttft_ms, worker_id, usage_source, occurred_at, recorded_at
    )
    SELECT r.id, r.t, r.k, r.m, coalesce(r.ep, ''), coalesce(r.p, 0), coalesce(r.c, 0),
           coalesce(r.s, 'ok'), coalesce(r.h, 0), coalesce(r.l, 0), r.f, coalesce(r.w, ''),
           coalesce(r.u, 'engine'), to_timestamp(r.ts / 1000.0), now()
    FROM json_to_recordset(%s::json) AS r(
        id text, t uuid, k uuid, m text, ep text, p int, c int, s text, h int, l int, f int, w text, u text,
        ts bigint
    )
    ON CONFLICT (request_id) DO NOTHING
    RETURNING tenant_id, model, occurred_at, prompt_tokens, completion_tokens, status
)
INSERT INTO billing_usagehourly (tenant_id, model, hour, requests, errors, prompt_tokens, completion_tokens)
SELECT tenant_id, model, date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       count(*), count(*) FILTER (WHERE status <> 'ok'), sum(prompt_tokens), sum(completion_tokens)
FROM ins
GROUP BY 1, 2, 3
ON CONFLICT (tenant_id, model, hour) DO UPDATE SET
    requests = billing_usagehourly.requests + EXCLUDED.requests,
    errors = billing_usagehourly.errors + EXCLUDED.errors,
    prompt_tokens = billing_usagehourly.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = billing_usagehourly.completion_tokens + EXCLUDED.completion_tokens
"""


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def ensure_group(client: redis.Redis | None = None) -> None:
    client = client or get_redis()
    try:
        client.xgroup_create(rkey(STREAM), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _valid(event) -> bool:
    """Strict, so one malformed event can never make a whole batch fail (and block the stream)."""
    try:
        uuid.UUID(str(event["t"]))
        if event.get("k") is not None:
            uuid.UUID(str(event["k"]))
        ints_ok = all(
            event.get(name) is None or (type(event[name]) is int and 0 <= event[name] < 2**31)
            for name in ("p", "c", "h", "l", "f")
        )
        strings_ok = all(event.get(name) is None or isinstance(event[name], str) for name in ("ep", "s", "w"))
        source_ok = event.get("u") is None or event["u"] in USAGE_SOURCES
        return (
            isinstance(event["id"], str)
            and 0 < len(event["id"]) <= 64
            and isinstance(event["m"], str)
            and 0 < len(event["m"]) <= 200
            and type(event["ts"]) is int
            and event["ts"] > 0
            and ints_ok
            and strings_ok
            and source_ok
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return False


def write_events(events: list[dict]) -> int:
    """Insert a batch (idempotent by request id) and update the rollups; returns rows inserted."""
    if not events:
        return 0
    # Within one batch the same request id may appear twice (a re-delivery): keep the first.
    unique: dict[str, dict] = {}
    for event in events:
        unique.setdefault(event["id"], event)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_INSERT, [orjson.dumps(list(unique.values())).decode()])
        return cursor.rowcount


def _decode_entries(entries) -> tuple[list[str], list[dict]]:
    ids, events = [], []
    for entry_id, fields in entries or ():
        if fields is None:  # deleted while pending
            ids.append(entry_id)
            continue
        ids.append(entry_id)
        raw = fields.get("e") if isinstance(fields, dict) else None
        try:
            event = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            event = None
        if event is None or not _valid(event):
            logger.error("dropping malformed usage event %s: %r", entry_id, fields)
            continue
        events.append(event)
    return ids, events


def consume_batch(
    *,
    consumer: str | None = None,
    count: int = 5000,
    block_ms: int | None = 1000,
    claim_idle_ms: int = CLAIM_IDLE_MS,
    client: redis.Redis | None = None,
) -> int:
    """Process one batch (reclaimed entries first, then new ones); returns events handled."""
    client = client or get_redis()
    consumer = consumer or consumer_name()
    stream = rkey(STREAM)
    _, claimed = client.xautoclaim(
        stream, GROUP, consumer, min_idle_time=claim_idle_ms, start_id="0-0", count=count
    )[:2]
    entries = list(claimed or [])
    if not entries:
        response = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count, block=block_ms)
        for _stream, stream_entries in response or ():
            entries.extend(stream_entries)
    if not entries:
        return 0
    ids, events = _decode_entries(entries)
    write_events(events)
    # Acknowledge only after the commit: a crash before this line means re-delivery, which the
    # unique request id turns into a no-op.
    pipe = client.pipeline(transaction=False)
    pipe.xack(stream, GROUP, *ids)
    pipe.xdel(stream, *ids)
    pipe.execute()
    return len(ids)


def run(*, count: int = 5000, stop_after: float | None = None) -> None:
    """The consumer process's loop (``manage.py consume_usage``)."""
    client = get_redis()
    ensure_group(client)
    consumer = consumer_name()
    logger.info("usage consumer %s reading %s", consumer, rkey(STREAM))
    started = time.monotonic()
    while stop_after is None or time.monotonic() - started < stop_after:
        try:
            checkpoints.bill_lost_streams_every(client=client)
            consume_batch(consumer=consumer, count=count, client=client)
        except (redis.ConnectionError, redis.TimeoutError):
            logger.warning("Redis unavailable; retrying in 1s", exc_info=True)
            time.sleep(1)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            ensure_group(client)  # Redis lost the stream (flushed, restarted without persistence)
        finally:
            if not connection.in_atomic_block:  # (a test's transaction) — else drop a stale connection
                connection.close_if_unusable_or_obsolete()
