"""The Redis copy of keys and tenants that the gateway reads instead of PostgreSQL.

The layout (``apikey:<lookup id>``, ``tenant:<id>``, the invalidation messages) is the contract's:
see ``contract``. Writes happen after the database commit. If Redis was unreachable at that
moment, the periodic ``resync`` (and ``manage.py rebuild_key_mirror``) brings the mirror back in
line with PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import uuid

import redis
from django.db.models import Q
from django.utils import timezone

from berth.redis import get_redis, mirror_write, names
from contract import invalidation
from contract.spend import to_micros
from tenants.constants import KeyKind

logger = logging.getLogger(__name__)
RESYNC_BATCH = 500


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
    name = names().api_key(api_key.lookup_id)
    pipe.delete(name)
    if api_key.kind != KeyKind.INFERENCE or not api_key.is_usable:
        return
    pipe.hset(name, mapping=key_entry(api_key))
    if api_key.expires_at:
        pipe.expireat(name, api_key.expires_at)


def _write_tenant(pipe, tenant_id, entry: dict[str, str], rev: str | None = None) -> None:
    # ``rev`` changes with every write, so the resync can tell whether anyone wrote after it.
    pipe.hset(names().tenant(tenant_id), mapping={**entry, "rev": rev or uuid.uuid4().hex})


def publish_key(api_key) -> bool:
    def write(pipe):
        _write_tenant(pipe, api_key.tenant_id, tenant_entry(api_key.tenant))
        _write_key(pipe, api_key)

    return mirror_write(
        write, invalidate=invalidation.api_key(api_key.lookup_id), what=f"key {api_key.lookup_id}"
    )


def unpublish_key(lookup_id: str) -> bool:
    return mirror_write(
        lambda pipe: pipe.delete(names().api_key(lookup_id)),
        invalidate=invalidation.api_key(lookup_id),
        what=f"key {lookup_id}",
    )


def publish_tenant(tenant) -> bool:
    return mirror_write(
        lambda pipe: _write_tenant(pipe, tenant.pk, tenant_entry(tenant)),
        invalidate=invalidation.tenant(tenant.pk),
        what=f"tenant {tenant.pk}",
    )


def unpublish_tenant(tenant_id) -> bool:
    """Drop a deleted tenant: the gateway then refuses every key that names it."""
    return mirror_write(
        lambda pipe: pipe.delete(names().tenant(tenant_id)),
        invalidate=invalidation.tenant(tenant_id),
        what=f"tenant {tenant_id}",
    )


def _usable_keys(lookup_ids=None):
    from tenants.models import ApiKey

    keys = ApiKey.objects.select_related("tenant__plan").filter(
        kind=KeyKind.INFERENCE, revoked_at__isnull=True
    )
    keys = keys.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
    return keys if lookup_ids is None else keys.filter(lookup_id__in=lookup_ids)


def _tenant_entries() -> dict[str, dict[str, str]]:
    from tenants.models import Tenant

    return {str(tenant.pk): tenant_entry(tenant) for tenant in Tenant.objects.select_related("plan")}


def _snapshot() -> tuple[list, dict[str, dict[str, str]]]:
    """What the database says now: usable inference keys and every tenant's entry."""
    return list(_usable_keys()), _tenant_entries()


def _republish_tenant_if_unchanged(tenant_id: str, rev: str, entry: dict[str, str]) -> bool:
    """Replace what the resync wrote (``rev``) with ``entry``, unless someone wrote it since.

    A change committed after the resync's second look publishes its own, newer entry; that write
    must win over ours, so ours is a compare-and-set (WATCH) on the hash's ``rev``.
    """
    name = names().tenant(tenant_id)
    try:
        with get_redis().pipeline(transaction=True) as pipe:
            pipe.watch(name)
            if pipe.hget(name, "rev") != rev:
                pipe.unwatch()
                return False
            pipe.multi()
            _write_tenant(pipe, tenant_id, entry)
            pipe.publish(names().invalidate_channel(), invalidation.tenant(tenant_id))
            pipe.execute()
    except redis.WatchError:
        return False
    except redis.RedisError:
        logger.exception("could not correct tenant %s in Redis; the next resync will", tenant_id)
        return False
    return True


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _batched(items: list) -> list[list]:
    return [items[first : first + RESYNC_BATCH] for first in range(0, len(items), RESYNC_BATCH)]


def resync() -> dict[str, int]:
    """Make the mirror equal to PostgreSQL: write every usable key and tenant, drop the rest.

    The writes come from a snapshot, and a key revoked or a tenant suspended after the snapshot
    would be brought back by them (its own Redis update may already have run). So after writing,
    the database is asked again: keys no longer usable are unpublished, tenants whose entry
    changed are rewritten (only if untouched since). A change that commits after that second look
    unpublishes or publishes itself after our writes, so nothing revoked stays alive.
    """
    from tenants.models import Tenant

    client = get_redis()
    keys, tenants = _snapshot()
    rev = uuid.uuid4().hex
    # MULTI/EXEC per batch: a key's DEL and HSET must not be seen apart (a gateway reading between
    # them would refuse a good key), and short batches never block Redis for long.
    for batch in _batched(list(tenants.items())):
        with client.pipeline(transaction=True) as pipe:
            for tenant_id, entry in batch:
                _write_tenant(pipe, tenant_id, entry, rev)
            pipe.execute()
    for batch in _batched(keys):
        with client.pipeline(transaction=True) as pipe:
            for key in batch:
                _write_key(pipe, key)
            pipe.execute()

    # The second look, after the writes.
    written = {key.lookup_id for key in keys}
    revoked = written - set(_usable_keys(written).values_list("lookup_id", flat=True))
    for lookup_id in revoked:
        unpublish_key(lookup_id)
    now_tenants = _tenant_entries()
    changed = 0
    for tenant_id, entry in tenants.items():
        if tenant_id not in now_tenants:
            unpublish_tenant(tenant_id)
        elif now_tenants[tenant_id] != entry:
            changed += _republish_tenant_if_unchanged(tenant_id, rev, now_tenants[tenant_id])

    wanted = {names().api_key(lookup_id) for lookup_id in written - revoked}
    stale = {
        names().lookup_id_of(name)
        for name in client.scan_iter(match=names().api_key_pattern(), count=1000)
        if name not in wanted
    }
    # A key created while we scanned is in Redis but not in `keys`: ask the database again.
    stale -= set(_usable_keys(stale).values_list("lookup_id", flat=True))
    for lookup_id in stale:
        unpublish_key(lookup_id)
    # Tenants deleted while Redis could not be told.
    mirrored = {
        names().tenant_id_of(name) for name in client.scan_iter(match=names().tenant_pattern(), count=1000)
    }
    gone = {tenant_id for tenant_id in mirrored if _is_uuid(tenant_id)} - set(now_tenants)
    gone -= {str(pk) for pk in Tenant.objects.filter(pk__in=gone).values_list("pk", flat=True)}
    for tenant_id in gone:
        unpublish_tenant(tenant_id)
    return {
        "written": len(keys),
        "removed": len(stale) + len(revoked),
        "tenants": len(tenants),
        "tenants_corrected": changed,
        "tenants_removed": len(gone),
    }
