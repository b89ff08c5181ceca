"""Deletes reach the Redis mirror here: the one place mirroring hangs on signals.

Every create and change goes through a service function that writes PostgreSQL and then mirrors
after the commit (``tenants/keys.py``, ``accounts.py``, ``plans.py``, ``membership.py``, and
``models_registry/catalog.py`` for models and prices). Deletes cannot all do so: a tenant's
delete cascades to its keys and memberships, a user's to their memberships, and the admin deletes
querysets and inline rows with the ORM, so no service sees those rows go. Without these receivers
the gateway would keep accepting such keys until the next resync; ``post_delete`` also turns off
Django's fast cascade delete for these models, so every cascaded row passes here.

* a deleted key or tenant leaves the mirror after the commit (nothing on rollback);
* a deleted membership revokes the keys the person made in that tenant, as removing a member does
  (``tenants/membership.py``), so they stop working and are not revived if the person returns;
* a deleted user's keys are revoked in every tenant before the delete nulls ``created_by`` and
  hides whose they were.
"""

from django.db import transaction
from django.db.models.signals import post_delete, pre_delete
from django.dispatch import receiver

from tenants import keys, mirror
from tenants.models import ApiKey, Membership, Tenant, User


@receiver(post_delete, sender=ApiKey, dispatch_uid="tenants.unpublish_deleted_key")
def unpublish_deleted_key(sender, instance, using, **kwargs):
    lookup_id = instance.lookup_id
    transaction.on_commit(lambda: mirror.unpublish_key(lookup_id), using=using)


@receiver(post_delete, sender=Tenant, dispatch_uid="tenants.unpublish_deleted_tenant")
def unpublish_deleted_tenant(sender, instance, using, **kwargs):
    tenant_id = instance.pk
    transaction.on_commit(lambda: mirror.unpublish_tenant(tenant_id), using=using)


def _revoke_all(api_keys) -> None:
    for api_key in api_keys.usable():
        keys.revoke_api_key(api_key=api_key)


@receiver(post_delete, sender=Membership, dispatch_uid="tenants.revoke_keys_of_removed_member")
def revoke_keys_of_removed_member(sender, instance, **kwargs):
    _revoke_all(ApiKey.objects.filter(tenant_id=instance.tenant_id, created_by_id=instance.user_id))


@receiver(pre_delete, sender=User, dispatch_uid="tenants.revoke_keys_of_deleted_user")
def revoke_keys_of_deleted_user(sender, instance, **kwargs):
    _revoke_all(ApiKey.objects.filter(created_by_id=instance.pk))
