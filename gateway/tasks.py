"""Celery tasks of the gateway's control-plane side (never run in the gateway process)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from celery import shared_task
from django.db.models import Q

from berth.redis import get_redis, rkey
from tenants.keys import LAST_USED_GRANULARITY
from tenants.models import ApiKey

LAST_USED_HASH = "key_last_used"  # gateway/metering.py writes it


def flush_key_last_used() -> int:
    """Write the gateways' recorded key use times to ``ApiKey.last_used_at`` (≤ once a minute each)."""
    client = get_redis()
    source = rkey(LAST_USED_HASH)
    claimed = rkey(LAST_USED_HASH, "flushing", uuid.uuid4().hex)
    try:
        client.rename(source, claimed)  # atomic hand-over: new uses land in a fresh hash
    except Exception as exc:  # noqa: BLE001 - "no such key" means nothing to do
        if "no such key" in str(exc).lower():
            return 0
        raise
    updated = 0
    try:
        for key_id, stamp in client.hgetall(claimed).items():
            try:
                when = datetime.fromtimestamp(int(stamp), tz=UTC)
                uuid.UUID(key_id)
            except ValueError:
                continue
            updated += (
                ApiKey.objects.filter(pk=key_id)
                .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=when - LAST_USED_GRANULARITY))
                .update(last_used_at=when)
            )
    finally:
        client.delete(claimed)
    return updated


@shared_task(name="gateway.tasks.flush_key_last_used")
def flush_key_last_used_task() -> int:
    return flush_key_last_used()
