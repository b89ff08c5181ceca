"""The gateway's audit events (guardrail flags…) moved from Redis into the trail.

The gateway cannot write PostgreSQL; it XADDs to ``audit:events`` (``contract.redis_names``,
field ``e`` = JSON ``{"id", "ts_ms", "action", "tenant_id", "key_id", "request_id", "summary",
"detail"}``). A beat task reads the stream with the consumer group ``audit`` (pending entries of
an earlier crash first), records each event with its ``id`` as ``event_id`` (unique, so an event
read twice is recorded once) and acknowledges it after the commit. An event that cannot be parsed
is acknowledged and logged, never retried forever.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

import redis
from django.db import IntegrityError, transaction

from audit import trail
from audit.constants import ActorKind
from audit.models import AuditEntry
from berth.redis import get_redis, names
from contract.redis_names import AUDIT_GROUP
from tenants.models import ApiKey, Tenant

logger = logging.getLogger(__name__)

CONSUMER = "control-plane"


def _ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, AUDIT_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def consume(*, count: int = 500, client: redis.Redis | None = None) -> int:
    """Move what the stream holds into the trail; how many events were recorded."""
    client = client or get_redis()
    stream = names().audit_events()
    _ensure_group(client, stream)
    recorded = 0
    for start in ("0", ">"):  # our pending (an earlier run died before XACK), then new
        while True:
            reply = client.xreadgroup(AUDIT_GROUP, CONSUMER, {stream: start}, count=count)
            messages = reply[0][1] if reply else []
            if not messages:
                break
            for message_id, fields in messages:
                if _record(fields):
                    recorded += 1
                client.xack(stream, AUDIT_GROUP, message_id)
            if start == "0" and len(messages) < count:
                break
    return recorded


def _record(fields: dict) -> bool:
    try:
        event = json.loads(fields["e"])
        event_id = uuid.UUID(str(event["id"]))
        action = str(event["action"])
    except (KeyError, TypeError, ValueError) as exc:
        logger.error("unreadable audit event %r: %s", fields, exc)
        return False
    if AuditEntry.objects.filter(event_id=event_id).exists():
        return False
    tenant = (
        Tenant.objects.filter(pk=_uuid(event.get("tenant_id"))).first()
        if _uuid(event.get("tenant_id"))
        else None
    )
    key_id = _uuid(event.get("key_id"))
    key = ApiKey.objects.filter(pk=key_id).first() if key_id else None
    ts_ms = event.get("ts_ms")
    when = datetime.fromtimestamp(ts_ms / 1000, tz=UTC) if isinstance(ts_ms, int | float) else None
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    try:
        with transaction.atomic():
            trail.record(
                action=action[:64],
                tenant=tenant,
                actor_kind=ActorKind.API_KEY if key else ActorKind.SYSTEM,
                actor=key.created_by if key else None,
                actor_label=f"{key.display_prefix}…" if key else "gateway",
                target=key,
                summary=str(event.get("summary") or "")[:2000],
                after={"request_id": event.get("request_id"), **detail},
                event_id=event_id,
                created_at=when,
            )
    except IntegrityError:  # recorded by a concurrent run between the check and the insert
        return False
    return True


def _uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
