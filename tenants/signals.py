"""Deleted keys and tenants leave the Redis mirror at once, whoever deletes them.

Revocation goes through ``tenants/keys.py``, but rows can also be deleted in the admin, with the
ORM, or by cascade when a tenant goes; without these receivers the gateway would keep accepting
such a key until the next resync. ``post_delete`` also disables Django's fast cascade delete for
these models, so every cascaded key passes here too.

For the same reason, a membership or user deleted outside ``tenants/membership.py`` (ORM, admin
inline, cascade) takes the person's keys with it, as removing a member does: otherwise their
inference keys would keep working (a user's are caught before the delete sets ``created_by`` to
null and hides whose they were).
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
