"""Republish a tenant's mirror entry when its spend limit changes, so the gateway refuses at the
new limit within one request (the periodic spend check repairs any write missed here)."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_init, post_save
from django.dispatch import receiver

from billing.models import BillingAccount
from tenants.models import Plan, Tenant


def _publish(tenants) -> None:
    from tenants import mirror

    for tenant in tenants:
        mirror.publish_tenant(tenant)


@receiver(post_init, sender=BillingAccount)
def _remember_account_limit(sender, instance, **kwargs):
    instance._mirrored_limit = instance.spend_limit


@receiver(post_save, sender=BillingAccount)
def _account_saved(sender, instance, created, **kwargs):
    if instance.spend_limit == instance._mirrored_limit and not (
        created and instance.spend_limit is not None
    ):
        return  # dunning and alerts save accounts often; only a new limit concerns the gateway
    instance._mirrored_limit = instance.spend_limit
    tenant_id = instance.tenant_id
    transaction.on_commit(lambda: _publish(Tenant.objects.select_related("plan").filter(pk=tenant_id)))


@receiver(post_init, sender=Plan)
def _remember_plan_limit(sender, instance, **kwargs):
    instance._mirrored_limit = instance.monthly_spend_limit


@receiver(post_save, sender=Plan)
def _plan_saved(sender, instance, created, **kwargs):
    if created or instance.monthly_spend_limit == instance._mirrored_limit:
        return
    instance._mirrored_limit = instance.monthly_spend_limit
    plan_id = instance.pk
    transaction.on_commit(
        lambda: _publish(
            Tenant.objects.select_related("plan").filter(plan_id=plan_id).iterator(chunk_size=500)
        )
    )
