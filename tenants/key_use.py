"""Key last-use times: the gateways record them in Redis, this writes them to ``ApiKey``.

The gateway has no database, so each one batches the time it last saw every key into one Redis
hash (``gateway/metering.py``); a periodic task (``tenants.tasks.flush_key_last_used``, beat every
30 s) takes the hash over atomically and writes ``last_used_at`` at most once a minute per key,
the granularity ``tenants.keys`` uses.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from django.db.models import Q

from berth.redis import get_redis, names
from tenants.keys import LAST_USED_GRANULARITY
from tenants.models import ApiKey


def flush_key_last_used() -> int:
    """Write the gateways' recorded key use times to ``ApiKey.last_used_at`` (≤ once a minute each)."""
    client = get_redis()
    source = names().key_last_used()
    claimed = names().key_last_used_flushing(uuid.uuid4().hex)
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
                pk = uuid.UUID(str(key_id))
            except ValueError:
                continue
            updated += (
                ApiKey.objects.filter(pk=pk)
                .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=when - LAST_USED_GRANULARITY))
                .update(last_used_at=when)
            )
    finally:
        client.delete(claimed)
    return updated
