"""The content log: what the gateway logged for tenants with ``log_content``, stored and purged.

The gateway appends one entry per request to the ``content_log`` stream (field ``e``, JSON: the
request id, tenant, key, model, endpoint, status, and the prompt and answer texts after
redaction) and only for a tenant whose mirrored guardrails say ``log_content``. ``store`` moves
entries into ``ContentLog`` (idempotent: the request id is unique, so a run that dies between the
insert and the XDEL inserts nothing twice) and checks the setting once more, so content a gateway
sent before it saw a tenant turn logging off is dropped, not stored. ``purge`` deletes what is
older than each tenant's ``content_retention_days``.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid

from django.db import transaction
from django.utils import timezone

from berth.redis import get_redis, names

logger = logging.getLogger(__name__)
BATCH = 500
DEFAULT_RETENTION_DAYS = 30


def _uuid(value) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def store(*, max_batches: int = 20) -> int:
    """Move the stream's entries into ``ContentLog``; returns how many rows were stored."""
    from guardrails.models import ContentGovernance, ContentLog

    client = get_redis()
    stream = names().content_log()
    stored = 0
    for _ in range(max_batches):
        entries = client.xrange(stream, count=BATCH)
        if not entries:
            break
        rows = []
        tenant_ids = set()
        parsed = []
        for _entry_id, fields in entries:
            try:
                event = json.loads((fields or {}).get("e") or "")
            except ValueError:
                event = None
            tenant_id = _uuid(event.get("tenant_id")) if isinstance(event, dict) else None
            if tenant_id is None or not isinstance(event, dict):
                logger.warning("dropping a malformed content log entry")
                continue
            tenant_ids.add(tenant_id)
            parsed.append((tenant_id, event))
        allowed = set(
            ContentGovernance.objects.filter(tenant_id__in=tenant_ids, log_content=True).values_list(
                "tenant_id", flat=True
            )
        )
        for tenant_id, event in parsed:
            if tenant_id not in allowed:
                continue
            occurred = datetime.datetime.fromtimestamp(int(event.get("ts_ms") or 0) / 1000, tz=datetime.UTC)
            rows.append(
                ContentLog(
                    request_id=str(event.get("request_id") or "")[:64],
                    tenant_id=tenant_id,
                    key_id=_uuid(event.get("key_id")) if event.get("key_id") else None,
                    model=str(event.get("model") or "")[:200],
                    endpoint=str(event.get("endpoint") or "")[:32],
                    status=str(event.get("status") or "")[:32],
                    http_status=max(0, min(int(event.get("http_status") or 0), 32767)),
                    prompt=str(event.get("prompt") or ""),
                    completion=str(event.get("completion") or ""),
                    occurred_at=occurred,
                )
            )
        with transaction.atomic():
            ContentLog.objects.bulk_create(rows, ignore_conflicts=True)
        client.xdel(stream, *[entry_id for entry_id, _ in entries if entry_id is not None])
        stored += len(rows)
        if len(entries) < BATCH:
            break
    return stored


def purge() -> int:
    """Delete content older than each tenant's retention (the default for tenants without one)."""
    from guardrails.models import ContentGovernance, ContentLog

    now = timezone.now()
    deleted = 0
    custom = ContentGovernance.objects.values_list("tenant_id", "content_retention_days")
    for tenant_id, days in custom:
        count, _ = ContentLog.objects.filter(
            tenant_id=tenant_id, occurred_at__lt=now - datetime.timedelta(days=days)
        ).delete()
        deleted += count
    count, _ = (
        ContentLog.objects.exclude(tenant__content_governance__isnull=False)
        .filter(occurred_at__lt=now - datetime.timedelta(days=DEFAULT_RETENTION_DAYS))
        .delete()
    )
    return deleted + count
