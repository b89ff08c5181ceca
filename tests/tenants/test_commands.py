"""Operator CLI: create_tenant, create_api_key, revoke_api_key."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from berth.redis import names
from tenants.constants import Role
from tenants.models import ApiKey, Membership, Tenant
from tests.factories import TenantFactory, free_plan, member

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
    assert redis_client.exists(names().api_key(api_key.lookup_id))


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
    assert not redis_client.exists(names().api_key(api_key.lookup_id))
    with pytest.raises(CommandError):
        run("revoke_api_key", "sk-berth-doesnotexist")


def test_create_api_key_management_key_works_against_the_api(client):
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER)
    out, _ = run(
        "create_api_key", "--tenant", tenant.slug, "--kind", "management", "--user", owner.email.upper()
    )
    assert re.fullmatch(r"mk-berth-[A-Za-z0-9]{12}_[A-Za-z0-9]{43}\n", out)
    response = client.get("/api/v1/keys/", HTTP_AUTHORIZATION=f"Bearer {out.strip()}")
    assert response.status_code == 200
    assert [k["kind"] for k in response.json()["results"]] == ["management"]
    assert not ApiKey.objects.filter(tenant=tenant, created_by=None).exists()


def test_create_api_key_management_without_a_member_refuses_clearly():
    tenant = TenantFactory()
    with pytest.raises(CommandError, match="--kind management needs --user"):
        run("create_api_key", "--tenant", tenant.slug, "--kind", "management")
    outsider = member(TenantFactory(), Role.OWNER)
    with pytest.raises(CommandError, match="is not a member of"):
        run("create_api_key", "--tenant", tenant.slug, "--kind", "management", "--user", outsider.email)
    with pytest.raises(CommandError, match="No active user"):
        run("create_api_key", "--tenant", tenant.slug, "--kind", "management", "--user", "nobody@x.test")
    assert not ApiKey.objects.filter(tenant=tenant).exists()
