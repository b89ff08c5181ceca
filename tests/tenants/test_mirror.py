"""The Redis mirror of keys and tenants that the gateway reads."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from berth.redis import get_redis, names
from contract import invalidation
from tenants import accounts, keys, mirror
from tenants.constants import KeyKind, TenantStatus
from tenants.models import ApiKey
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _mirrored(lookup_id: str) -> bool:
    return bool(get_redis().exists(names().api_key(lookup_id)))


def test_it_mirrors_a_new_key_after_commit(redis_client):
    tenant = TenantFactory()
    created = keys.create_api_key(tenant=tenant, name="k", allowed_models=["tiny"])
    entry = redis_client.hgetall(names().api_key(created.api_key.lookup_id))
    assert entry["hash"] == created.api_key.secret_hash
    assert entry["tenant_id"] == str(tenant.pk)
    assert json.loads(entry["allowed_models"]) == ["tiny"]
    assert created.plaintext.split("_", 1)[1] not in json.dumps(entry)
    tenant_entry = redis_client.hgetall(names().tenant(tenant.pk))
    assert tenant_entry["status"] == "active"
    assert json.loads(tenant_entry["plan"])["rpm"] == tenant.plan.requests_per_minute


def test_revoking_removes_the_key_from_redis_within_a_second(redis_client):
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    name = names().api_key(created.api_key.lookup_id)
    assert redis_client.exists(name)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(names().invalidate_channel())
    pubsub.get_message(timeout=1)  # subscription confirmation
    started = time.monotonic()
    keys.revoke_api_key(api_key=created.api_key)
    while redis_client.exists(name) and time.monotonic() - started < 1:
        time.sleep(0.01)
    assert not redis_client.exists(name)
    message = pubsub.get_message(timeout=1)
    assert message and message["data"] == invalidation.api_key(created.api_key.lookup_id)
    pubsub.close()


def test_a_rolled_back_key_is_never_mirrored(redis_client):
    from django.db import transaction

    tenant = TenantFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        created = keys.create_api_key(tenant=tenant, name="k")
        raise RuntimeError("boom")
    assert not redis_client.exists(names().api_key(created.api_key.lookup_id))


def test_management_keys_are_not_mirrored(redis_client):
    created = keys.create_api_key(tenant=TenantFactory(), name="k", kind=KeyKind.MANAGEMENT)
    assert not redis_client.exists(names().api_key(created.api_key.lookup_id))


def test_an_expiring_key_vanishes_from_redis_on_time(redis_client):
    expires = timezone.now() + timedelta(hours=1)
    created = keys.create_api_key(tenant=TenantFactory(), name="k", expires_at=expires)
    ttl = redis_client.ttl(names().api_key(created.api_key.lookup_id))
    assert 3500 < ttl <= 3600


def test_resync_restores_missing_entries_and_drops_stale_ones(redis_client):
    tenant = TenantFactory()
    kept = keys.create_api_key(tenant=tenant, name="kept")
    revoked = keys.create_api_key(tenant=tenant, name="gone")
    keys.revoke_api_key(api_key=revoked.api_key)
    redis_client.flushdb()
    # A stale entry, e.g. a revocation whose Redis write failed.
    redis_client.hset(names().api_key(revoked.api_key.lookup_id), mapping={"hash": "x"})
    out = io.StringIO()
    call_command("rebuild_key_mirror", stdout=out)
    assert "Mirrored 1 key(s) and 1 tenant(s); removed 1 stale key(s)" in out.getvalue()
    assert redis_client.exists(names().api_key(kept.api_key.lookup_id))
    assert not redis_client.exists(names().api_key(revoked.api_key.lookup_id))
    assert redis_client.exists(names().tenant(tenant.pk))


def test_suspending_a_tenant_updates_its_mirror(redis_client):
    tenant = TenantFactory()
    mirror.publish_tenant(tenant)
    accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "suspended"


def test_a_redis_outage_does_not_fail_key_creation(monkeypatch, redis_client):
    import redis as redis_lib

    def broken(*args, **kwargs):
        raise redis_lib.ConnectionError("down")

    monkeypatch.setattr(redis_lib.client.Pipeline, "execute", broken)
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    assert created.api_key.pk
    monkeypatch.undo()
    assert not redis_client.exists(names().api_key(created.api_key.lookup_id))
    mirror.resync()  # what the periodic task does
    assert redis_client.exists(names().api_key(created.api_key.lookup_id))


def _between_snapshot_and_write(monkeypatch, action):
    """Run ``action`` (committed at once) after the resync read the database, before it writes."""
    snapshot = mirror._snapshot

    def then_act():
        result = snapshot()
        action()
        return result

    monkeypatch.setattr(mirror, "_snapshot", then_act)


def test_resync_does_not_resurrect_a_key_revoked_while_it_runs(monkeypatch, redis_client):
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    other = keys.create_api_key(tenant=created.api_key.tenant, name="other")
    _between_snapshot_and_write(monkeypatch, lambda: keys.revoke_api_key(api_key=created.api_key))
    pubsub = redis_client.pubsub()
    pubsub.subscribe(names().invalidate_channel())
    pubsub.get_message(timeout=1)
    mirror.resync()
    assert not _mirrored(created.api_key.lookup_id)
    assert _mirrored(other.api_key.lookup_id)
    messages = [pubsub.get_message(timeout=0.5) for _ in range(3)]
    assert invalidation.api_key(created.api_key.lookup_id) in [m["data"] for m in messages if m]
    pubsub.close()


def test_resync_does_not_reactivate_a_tenant_suspended_while_it_runs(monkeypatch, redis_client):
    tenant = TenantFactory()
    keys.create_api_key(tenant=tenant, name="k")
    _between_snapshot_and_write(
        monkeypatch, lambda: accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    )
    mirror.resync()
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "suspended"


def test_resync_leaves_a_newer_tenant_write_alone(monkeypatch, redis_client):
    """Suspended during the resync, then re-activated after its second look: active wins."""
    tenant = TenantFactory()
    _between_snapshot_and_write(
        monkeypatch, lambda: accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    )
    entries = mirror._tenant_entries
    calls = []

    def second_look_then_reactivate():
        result = entries()
        calls.append(1)
        if len(calls) == 2:  # the resync's second look; the first is inside the snapshot
            accounts.set_status(tenant=tenant, status=TenantStatus.ACTIVE)
        return result

    monkeypatch.setattr(mirror, "_tenant_entries", second_look_then_reactivate)
    mirror.resync()
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "active"


def test_resync_drops_deleted_tenants(redis_client):
    tenant = TenantFactory()
    mirror.publish_tenant(tenant)
    redis_client.hset(names().tenant("5d1c0f6e-0000-4000-8000-000000000000"), mapping={"status": "active"})
    redis_client.set(names().tenant("not-a-tenant-id"), "left alone")
    mirror.resync()
    assert redis_client.exists(names().tenant(tenant.pk))
    assert not redis_client.exists(names().tenant("5d1c0f6e-0000-4000-8000-000000000000"))
    assert redis_client.get(names().tenant("not-a-tenant-id")) == "left alone"


def test_deleting_a_key_with_the_orm_unpublishes_it(redis_client):
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    assert _mirrored(created.api_key.lookup_id)
    ApiKey.objects.filter(pk=created.api_key.pk).delete()
    assert not _mirrored(created.api_key.lookup_id)


def test_deleting_a_tenant_unpublishes_it_and_its_keys_by_cascade(redis_client):
    tenant = TenantFactory()
    created = [keys.create_api_key(tenant=tenant, name=f"k{n}") for n in range(3)]
    other = keys.create_api_key(tenant=TenantFactory(), name="other")
    tenant.delete()
    assert not redis_client.exists(names().tenant(tenant.id))
    assert all(not _mirrored(c.api_key.lookup_id) for c in created)
    assert _mirrored(other.api_key.lookup_id)


def test_a_delete_that_rolls_back_stays_published(redis_client):
    from django.db import transaction

    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    with pytest.raises(RuntimeError), transaction.atomic():
        created.api_key.tenant.delete()
        raise RuntimeError("boom")
    assert _mirrored(created.api_key.lookup_id)
