"""Operator CLI: create_tenant, create_api_key, revoke_api_key."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from berth.redis import rkey
from tenants.models import ApiKey, Membership, Tenant
from tests.factories import TenantFactory, free_plan

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_tenant_creates_owner_and_prints_the_slug():
    free_plan()
    out, _ = run(
        "create_tenant", "--name", "Acme Corp", "--owner-email", "Boss@Acme.test", "--password", "pw-Long-123"
    )
    assert out.strip() == "acme-corp"
    tenant = Tenant.objects.get(slug="acme-corp")
    membership = Membership.objects.get(tenant=tenant)
    assert membership.user.email == "boss@acme.test" and membership.role == "owner"
    assert membership.user.check_password("pw-Long-123")


def test_create_tenant_rejects_an_unknown_plan():
    free_plan()
    with pytest.raises(CommandError, match="No plan 'gold'"):
        run("create_tenant", "--name", "X", "--owner-email", "x@x.test", "--plan", "gold")
    assert Tenant.objects.count() == 0


def test_create_api_key_prints_only_the_key(redis_client):
    tenant = TenantFactory()
    out, _ = run("create_api_key", "--tenant", tenant.slug, "--name", "ci")
    assert re.fullmatch(r"sk-berth-[A-Za-z0-9]{12}_[A-Za-z0-9]{43}\n", out)
    api_key = ApiKey.objects.get(tenant=tenant)
    assert api_key.name == "ci"
    assert redis_client.exists(rkey("apikey", api_key.lookup_id))


def test_create_api_key_for_an_unknown_tenant_fails_clearly():
    with pytest.raises(CommandError, match="No tenant"):
        run("create_api_key", "--tenant", "nope")


def test_revoke_api_key_by_the_displayed_prefix(redis_client):
    tenant = TenantFactory()
    out, _ = run("create_api_key", "--tenant", tenant.slug)
    api_key = ApiKey.objects.get(tenant=tenant)
    run("revoke_api_key", api_key.display_prefix + "…")
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert not redis_client.exists(rkey("apikey", api_key.lookup_id))
    with pytest.raises(CommandError):
        run("revoke_api_key", "sk-berth-doesnotexist")
