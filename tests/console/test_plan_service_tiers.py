"""A plan's scheduling fields: edited in the admin (and mirrored to the gateway), shown to tenants
in the API and on the console's settings page, and the default Priority plan."""

from __future__ import annotations

import json

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from berth.redis import names
from tenants.models import Plan
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db(transaction=True)


def plan_form(plan: Plan, **changes) -> dict:
    form = {
        "name": plan.name,
        "slug": plan.slug,
        "currency": plan.currency,
        "requests_per_minute": plan.requests_per_minute or "",
        "tokens_per_minute": plan.tokens_per_minute or "",
        "max_concurrent_requests": plan.max_concurrent_requests or "",
        "monthly_token_budget": plan.monthly_token_budget or "",
        "monthly_spend_limit": plan.monthly_spend_limit if plan.monthly_spend_limit is not None else "",
        "max_adapters": plan.max_adapters if plan.max_adapters is not None else "",
        "max_adapter_rank": plan.max_adapter_rank if plan.max_adapter_rank is not None else "",
        "max_adapter_size_mb": plan.max_adapter_size_mb if plan.max_adapter_size_mb is not None else "",
        "priority_band": plan.priority_band,
        "fair_share_weight": plan.fair_share_weight,
        "monthly_batch_token_budget": plan.monthly_batch_token_budget or "",
    }
    form.update(changes)
    return form


def test_staff_edit_the_band_weight_and_batch_budget_and_the_gateway_sees_them(admin_client, redis_client):
    tenant = TenantFactory()
    plan = tenant.plan
    page = admin_client.get(f"/admin/tenants/plan/{plan.pk}/change/").content.decode()
    assert "Scheduling and service tiers" in page and "fair_share_weight" in page
    response = admin_client.post(
        f"/admin/tenants/plan/{plan.pk}/change/",
        plan_form(plan, priority_band="best_effort", fair_share_weight=0),
    )
    assert response.status_code == 200
    assert "fair_share_weight" in response.context["adminform"].form.errors
    response = admin_client.post(
        f"/admin/tenants/plan/{plan.pk}/change/",
        plan_form(
            plan, priority_band="best_effort", fair_share_weight=3, monthly_batch_token_budget=5_000_000
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    plan.refresh_from_db()
    assert (plan.priority_band, plan.fair_share_weight, plan.monthly_batch_token_budget) == (
        "best_effort",
        3,
        5_000_000,
    )
    mirrored = json.loads(redis_client.hget(names().tenant(tenant.pk), "plan"))
    assert (mirrored["band"], mirrored["weight"], mirrored["batch_tokens"]) == ("best_effort", 3, 5_000_000)
    assert "best_effort" in admin_client.get("/admin/tenants/plan/").content.decode()


def test_tenants_see_their_plans_tiers_in_the_api_and_the_console(client):
    tenant = TenantFactory()
    Plan.objects.filter(pk=tenant.plan_id).update(priority_band="standard", monthly_batch_token_budget=None)
    owner = member(tenant, "owner")
    api = APIClient()
    api.force_login(owner)
    plan = api.get("/api/v1/tenant").json()["plan"]
    assert (plan["priority_band"], plan["fair_share_weight"], plan["monthly_batch_token_budget"]) == (
        "standard",
        1,
        None,
    )
    assert plan["service_tiers"] == ["default", "flex"]

    client.force_login(owner)
    client.post("/switch/", {"tenant": str(tenant.pk)})
    html = client.get("/settings/").content.decode()
    assert "Service tiers: default, flex" in html and "batch jobs: no token budget" in html

    Plan.objects.filter(pk=tenant.plan_id).update(
        priority_band="priority", monthly_batch_token_budget=2_000_000
    )
    html = client.get("/settings/").content.decode()
    assert "Service tiers: priority, default, flex" in html and "batch jobs: 2,000,000 tokens/month" in html
    assert api.get("/api/v1/tenant").json()["plan"]["service_tiers"] == ["priority", "default", "flex"]


def test_the_migration_adds_a_priority_plan_and_keeps_the_others_standard():
    executor = MigrationExecutor(connection)
    executor.migrate([("tenants", "0008_plan_scheduling")])
    executor.loader.build_graph()
    old = executor.loader.project_state([("tenants", "0008_plan_scheduling")]).apps
    OldPlan = old.get_model("tenants", "Plan")
    OldPlan.objects.filter(slug="priority").delete()
    OldPlan.objects.get_or_create(slug="free", defaults={"name": "Free", "is_default": True})
    executor = MigrationExecutor(connection)
    executor.migrate([("tenants", "0009_priority_plan")])

    priority = Plan.objects.get(slug="priority")
    assert (priority.priority_band, priority.fair_share_weight, priority.is_default) == ("priority", 4, False)
    assert priority.limits()["rpm"] is None and priority.limits()["tpm"] is None
    assert priority.monthly_spend_limit is None and priority.monthly_batch_token_budget is None
    assert set(Plan.objects.exclude(slug="priority").values_list("priority_band", flat=True)) == {"standard"}
    # Migrating again is a no-op (get_or_create), and reverting leaves an unused plan out.
    executor = MigrationExecutor(connection)
    executor.migrate([("tenants", "0008_plan_scheduling")])
    assert not Plan.objects.filter(slug="priority").exists()
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
