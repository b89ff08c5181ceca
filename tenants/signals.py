"""Deleted keys and tenants leave the Redis mirror at once, whoever deletes them.

Revocation goes through ``tenants/keys.py``, but rows can also be deleted in the admin, with the
ORM, or by cascade when a tenant goes; without these receivers the gateway would keep accepting
such a key until the next resync. ``post_delete`` also disables Django's fast cascade delete for
these models, so every cascaded key passes here too.
"""

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from tenants import mirror
from tenants.models import ApiKey, Tenant


@receiver(post_delete, sender=ApiKey, dispatch_uid="tenants.unpublish_deleted_key")
def unpublish_deleted_key(sender, instance, using, **kwargs):
    lookup_id = instance.lookup_id
    transaction.on_commit(lambda: mirror.unpublish_key(lookup_id), using=using)


@receiver(post_delete, sender=Tenant, dispatch_uid="tenants.unpublish_deleted_tenant")
def unpublish_deleted_tenant(sender, instance, using, **kwargs):
    tenant_id = instance.pk
    transaction.on_commit(lambda: mirror.unpublish_tenant(tenant_id), using=using)
