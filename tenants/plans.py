"""Changing a plan: its limits and spend limit are copied into each of its tenants' mirror entries
(``tenants.mirror.tenant_entry``), so saving a plan republishes every tenant on it after the commit
and the gateway applies the new limits within one request."""

from __future__ import annotations

from django.db import transaction

from tenants import mirror
from tenants.models import Plan, Tenant

REPUBLISH_BATCH = 500


def save_plan(*, plan: Plan) -> Plan:
    """Create or update ``plan``; its tenants' mirror entries follow after the commit."""
    with transaction.atomic():
        plan.save()
        plan_id = plan.pk
        transaction.on_commit(lambda: republish_tenants(plan_id=plan_id))
    return plan


def republish_tenants(*, plan_id) -> int:
    """Publish every tenant on the plan again; returns how many."""
    count = 0
    tenants = Tenant.objects.select_related("plan").filter(plan_id=plan_id)
    for tenant in tenants.iterator(chunk_size=REPUBLISH_BATCH):
        mirror.publish_tenant(tenant)
        count += 1
    return count
