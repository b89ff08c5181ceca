"""The Redis copy of keys and tenants that the gateway reads instead of PostgreSQL.

Layout (all under ``settings.REDIS_PREFIX``):

* ``apikey:<lookup id>`` — hash: ``hash``, ``pepper``, ``key_id``, ``tenant_id``, ``name``,
  ``allowed_models`` (JSON list), ``expires_at`` (epoch seconds or empty). Only usable inference
  keys are present; a key with an expiry also gets a Redis ``EXPIREAT``, so it vanishes on time
  even if no task runs.
* ``tenant:<tenant id>`` — hash: ``slug``, ``status``, ``plan`` (JSON of the plan's limits),
  ``spend_limit_micros`` (the spend limit in micro-units, gateway/spend.py; empty: no limit).
* channel ``invalidate`` — ``apikey:<lookup id>`` / ``tenant:<id>`` is published on every change so
  gateways drop their short in-process caches at once.

Writes happen after the database commit. If Redis was unreachable at that moment, the periodic
``resync`` (and ``manage.py rebuild_key_mirror``) brings the mirror back in line with PostgreSQL.
"""

from __future__ import annotations

import json

from django.db.models import Q
from django.utils import timezone

from berth.redis import get_redis, mirror_write, rkey
from gateway.spend import to_micros
from tenants.constants import KeyKind

INVALIDATE_CHANNEL = "invalidate"


def key_entry(api_key) -> dict[str, str]:
    return {
        "hash": api_key.secret_hash,
        "pepper": api_key.pepper_id,
        "key_id": str(api_key.id),
        "tenant_id": str(api_key.tenant_id),
        "name": api_key.name,
        "allowed_models": json.dumps(list(api_key.allowed_models or [])),
        "expires_at": str(int(api_key.expires_at.timestamp())) if api_key.expires_at else "",
    }


def tenant_entry(tenant) -> dict[str, str]:
    from billing.spend import limit_for

    limit = limit_for(tenant)
    return {
        "slug": tenant.slug,
        "status": tenant.status,
        "plan": json.dumps(tenant.plan.limits()),
        "spend_limit_micros": "" if limit is None else str(to_micros(limit)),
    }


def _write_key(pipe, api_key) -> None:
    name = rkey("apikey", api_key.lookup_id)
    pipe.delete(name)
    if api_key.kind != KeyKind.INFERENCE or not api_key.is_usable:
        return
    pipe.hset(name, mapping=key_entry(api_key))
    if api_key.expires_at:
        pipe.expireat(name, api_key.expires_at)


def _write_tenant(pipe, tenant) -> None:
    pipe.hset(rkey("tenant", tenant.pk), mapping=tenant_entry(tenant))


def publish_key(api_key) -> bool:
    def write(pipe):
        _write_tenant(pipe, api_key.tenant)
        _write_key(pipe, api_key)

    return mirror_write(write, invalidate=f"apikey:{api_key.lookup_id}", what=f"key {api_key.lookup_id}")


def unpublish_key(lookup_id: str) -> bool:
    return mirror_write(
        lambda pipe: pipe.delete(rkey("apikey", lookup_id)),
        invalidate=f"apikey:{lookup_id}",
        what=f"key {lookup_id}",
    )


def publish_tenant(tenant) -> bool:
    return mirror_write(
        lambda pipe: _write_tenant(pipe, tenant), invalidate=f"tenant:{tenant.pk}", what=f"tenant {tenant.pk}"
    )


def resync() -> dict[str, int]:
    """Make the mirror equal to PostgreSQL: write every usable key and tenant, drop the rest."""
    from tenants.models import ApiKey, Tenant

    client = get_redis()
    now = timezone.now()
    keys = list(
        ApiKey.objects.select_related("tenant__plan")
        .filter(kind=KeyKind.INFERENCE, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    )
    wanted = {rkey("apikey", key.lookup_id) for key in keys}
    pipe = client.pipeline(transaction=False)
    for tenant in Tenant.objects.select_related("plan"):
        _write_tenant(pipe, tenant)
    for key in keys:
        _write_key(pipe, key)
    pipe.execute()
    stale = {
        name.rsplit(":", 1)[-1]
        for name in client.scan_iter(match=rkey("apikey", "*"), count=1000)
        if name not in wanted
    }
    # A key created while we scanned is in Redis but not in `keys`: ask the database again.
    stale -= set(
        ApiKey.objects.usable()
        .filter(kind=KeyKind.INFERENCE, lookup_id__in=stale)
        .values_list("lookup_id", flat=True)
    )
    for lookup_id in stale:
        unpublish_key(lookup_id)
    return {"written": len(keys), "removed": len(stale)}


def lookup(lookup_id: str) -> dict[str, str] | None:
    """Read one mirrored key (what the gateway does); ``None`` if absent."""
    entry = get_redis().hgetall(rkey("apikey", lookup_id))
    return entry or None
