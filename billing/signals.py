"""Republish the tenants of a plan whose spend limit changes, so the gateway refuses at the new
limit within one request. An account's own limit is republished by ``spend.check_tenant``, which
the console's settings and the admin run on save; the periodic check repairs anything missed."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_init, post_save
from django.dispatch import receiver

from tenants.models import Plan, Tenant


@receiver(post_init, sender=Plan)
def _remember_plan_limit(sender, instance, **kwargs):
    instance._mirrored_limit = instance.monthly_spend_limit


@receiver(post_save, sender=Plan)
def _plan_saved(sender, instance, created, **kwargs):
    if created or instance.monthly_spend_limit == instance._mirrored_limit:
        return
    instance._mirrored_limit = instance.monthly_spend_limit
    plan_id = instance.pk

    def publish():
        from tenants import mirror

        for tenant in Tenant.objects.select_related("plan").filter(plan_id=plan_id).iterator(chunk_size=500):
            mirror.publish_tenant(tenant)

    transaction.on_commit(publish)
