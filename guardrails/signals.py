"""Deletes reach the guardrails mirror here (creates and changes go through ``policies``).

A policy is also deleted by the cascade of its key's or tenant's delete, which no service sees;
so every deleted policy republishes its tenant after the commit, and a deleted tenant's hash goes.
"""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from guardrails import mirror
from guardrails.models import GuardrailPolicy
from tenants.models import Tenant


@receiver(post_delete, sender=GuardrailPolicy, dispatch_uid="guardrails.republish_after_policy_delete")
def republish_after_policy_delete(sender, instance, using, **kwargs):
    tenant_id = instance.tenant_id
    if tenant_id is None:
        from guardrails.tasks import resync_mirror

        transaction.on_commit(resync_mirror.delay, using=using)
        return

    def publish():
        if Tenant.objects.filter(pk=tenant_id).exists():
            mirror.publish_tenant(tenant_id)
        else:
            mirror.unpublish_tenant(tenant_id)

    transaction.on_commit(publish, using=using)


@receiver(post_delete, sender=Tenant, dispatch_uid="guardrails.unpublish_deleted_tenant")
def unpublish_deleted_tenant(sender, instance, using, **kwargs):
    tenant_id = instance.pk
    transaction.on_commit(lambda: mirror.unpublish_tenant(tenant_id), using=using)
