"""Django admin for staff over users, plans, tenants, memberships and keys."""

from __future__ import annotations

import time

import openai
import pytest

from berth.redis import names
from tenants import keys
from tenants.constants import Role
from tenants.models import User
from tests.factories import TenantFactory, member
from tests.gateway.conftest import start_gateway

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client):
    client.force_login(User.objects.create_superuser(email="staff@berth.test", password="x-Long-pass-1"))
    return client


@pytest.mark.parametrize("model", ["user", "plan", "tenant", "membership", "apikey", "invitation"])
def test_staff_see_every_changelist(staff_client, model):
    tenant = TenantFactory()
    member(tenant, Role.OWNER)
    keys.create_api_key(tenant=tenant, name="k")
    assert staff_client.get(f"/admin/tenants/{model}/").status_code == 200


def test_tenant_users_cannot_open_the_admin(client):
    client.force_login(member(TenantFactory(), Role.OWNER))
    response = client.get("/admin/tenants/apikey/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_key_page_never_offers_the_secret_and_revoke_action_unmirrors(staff_client, redis_client):
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    page = staff_client.get(f"/admin/tenants/apikey/{created.api_key.pk}/change/").content.decode()
    assert created.plaintext.split("_", 1)[1] not in page
    staff_client.post(
        "/admin/tenants/apikey/", {"action": "revoke", "_selected_action": [str(created.api_key.pk)]}
    )
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is not None
    assert not redis_client.exists(names().api_key(created.api_key.lookup_id))


def test_suspending_a_tenant_from_the_admin_reaches_redis(staff_client, redis_client):
    tenant = TenantFactory()
    staff_client.post("/admin/tenants/tenant/", {"action": "suspend", "_selected_action": [str(tenant.pk)]})
    tenant.refresh_from_db()
    assert tenant.status == "suspended"
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "suspended"


def _accepted(gateway_url: str, key: str) -> bool:
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=key, max_retries=0)
    try:
        client.models.list()
    except openai.AuthenticationError:
        return False
    return True


@pytest.mark.processes  # starts a gateway
@pytest.mark.parametrize("what", ["apikey", "tenant"])
def test_deleting_in_the_admin_stops_the_gateway_accepting_the_key_within_a_second(staff_client, what):
    tenant = TenantFactory()
    created = keys.create_api_key(tenant=tenant, name="k")
    gateway = start_gateway()
    try:
        assert _accepted(gateway.url, created.plaintext)
        target = created.api_key if what == "apikey" else tenant
        response = staff_client.post(f"/admin/tenants/{what}/{target.pk}/delete/", {"post": "yes"})
        assert response.status_code == 302
        deleted = time.monotonic()
        while _accepted(gateway.url, created.plaintext):
            assert time.monotonic() - deleted < 1, "the gateway still accepts a deleted key"
            time.sleep(0.05)
    finally:
        gateway.stop()


def test_activating_a_tenant_suspended_for_nonpayment_in_the_admin_clears_the_flag(
    staff_client, redis_client
):
    from billing.models import BillingAccount

    tenant = TenantFactory(status="suspended")
    BillingAccount.objects.update_or_create(tenant=tenant, defaults={"suspended_for_nonpayment": True})
    staff_client.post("/admin/tenants/tenant/", {"action": "activate", "_selected_action": [str(tenant.pk)]})
    tenant.refresh_from_db()
    assert tenant.status == "active"
    assert not BillingAccount.objects.get(tenant=tenant).suspended_for_nonpayment
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "active"


def test_editing_a_plan_in_the_admin_republishes_its_tenants(staff_client, redis_client):
    from tenants.models import Plan

    plan = Plan.objects.create(slug="admin-plan", name="Admin plan", requests_per_minute=60)
    tenant = TenantFactory(plan=plan)
    form = {
        "name": "Admin plan",
        "slug": "admin-plan",
        "requests_per_minute": "900",
        "currency": "USD",
        "priority_band": "standard",
        "fair_share_weight": "1",
    }
    response = staff_client.post(f"/admin/tenants/plan/{plan.pk}/change/", form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert '"rpm": 900' in redis_client.hget(names().tenant(tenant.pk), "plan")


def test_editing_a_tenant_in_the_admin_republishes_it(staff_client, redis_client):
    tenant = TenantFactory()
    form = {
        "name": tenant.name,
        "slug": "renamed-slug",
        "status": "active",
        "plan": str(tenant.plan_id),
        "memberships-TOTAL_FORMS": "0",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
    }
    response = staff_client.post(f"/admin/tenants/tenant/{tenant.pk}/change/", form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert redis_client.hget(names().tenant(tenant.pk), "slug") == "renamed-slug"


def test_editing_a_key_in_the_admin_republishes_it(staff_client, redis_client):
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    form = {"name": "renamed", "allowed_models": '["only-this"]', "expires_at_0": "", "expires_at_1": ""}
    response = staff_client.post(f"/admin/tenants/apikey/{created.api_key.pk}/change/", form)
    assert response.status_code == 302, response.context["adminform"].form.errors
    entry = redis_client.hgetall(names().api_key(created.api_key.lookup_id))
    assert entry["name"] == "renamed" and entry["allowed_models"] == '["only-this"]'
