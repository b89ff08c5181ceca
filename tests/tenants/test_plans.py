"""Saving a plan republishes its tenants: the gateway reads each tenant's plan limits from Redis."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.db import transaction

from berth.redis import names
from tenants import mirror, plans
from tenants.models import Plan
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db(transaction=True)


def published_plan(redis_client, tenant) -> dict:
    return json.loads(redis_client.hget(names().tenant(tenant.pk), "plan"))


def _plan(slug: str) -> Plan:
    return plans.save_plan(plan=Plan(slug=slug, name=slug.title(), requests_per_minute=60))


def test_saving_a_plan_republishes_every_tenant_on_it_and_no_other(redis_client):
    plan, other = _plan("team"), _plan("other")
    on_plan = [TenantFactory(plan=plan) for _ in range(3)]
    elsewhere = TenantFactory(plan=other)
    for tenant in [*on_plan, elsewhere]:
        mirror.publish_tenant(tenant)

    plan.requests_per_minute = 600
    plan.monthly_spend_limit = Decimal("5")
    plans.save_plan(plan=plan)
    assert all(published_plan(redis_client, t)["rpm"] == 600 for t in on_plan)
    assert all(redis_client.hget(names().tenant(t.pk), "spend_limit_micros") == "5000000" for t in on_plan)
    assert published_plan(redis_client, elsewhere)["rpm"] == 60
    assert plans.republish_tenants(plan_id=plan.pk) == 3


def test_a_plan_saved_with_the_bare_orm_waits_for_the_resync(redis_client):
    """One style: the service republishes, no signal on every save (the periodic resync heals)."""
    plan = _plan("orm")
    tenant = TenantFactory(plan=plan)
    mirror.publish_tenant(tenant)
    plan.requests_per_minute = 1
    plan.monthly_spend_limit = Decimal("7")
    plan.save()
    assert published_plan(redis_client, tenant)["rpm"] == 60
    assert redis_client.hget(names().tenant(tenant.pk), "spend_limit_micros") == ""
    mirror.resync()
    assert published_plan(redis_client, tenant)["rpm"] == 1
    assert redis_client.hget(names().tenant(tenant.pk), "spend_limit_micros") == "7000000"


def test_a_plan_saved_in_a_rolled_back_transaction_republishes_nothing(redis_client):
    plan = _plan("rolled")
    tenant = TenantFactory(plan=plan)
    mirror.publish_tenant(tenant)
    with pytest.raises(RuntimeError), transaction.atomic():
        plan.requests_per_minute = 2
        plans.save_plan(plan=plan)
        raise RuntimeError("boom")
    assert published_plan(redis_client, tenant)["rpm"] == 60
