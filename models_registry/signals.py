"""Keep the Redis mirror of the registry current on every change (after commit), prices included."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver

from models_registry import mirror
from models_registry.models import Model, Price


@receiver(pre_save, sender=Model)
def _remember_old_name(sender, instance, **kwargs):
    if instance.pk:
        instance._previous_name = Model.objects.filter(pk=instance.pk).values_list("name", flat=True).first()


@receiver(post_save, sender=Model)
def _model_saved(sender, instance, **kwargs):
    previous = getattr(instance, "_previous_name", None)

    def publish():
        if previous and previous != instance.name:
            mirror.unpublish_model(previous)
        mirror.publish_model(instance)

    transaction.on_commit(publish)


@receiver(m2m_changed, sender=Model.allowed_tenants.through)
def _model_tenants_changed(sender, instance, action, **kwargs):
    if action in ("post_add", "post_remove", "post_clear") and isinstance(instance, Model):
        transaction.on_commit(lambda: mirror.publish_model(instance))


@receiver(post_delete, sender=Model)
def _model_deleted(sender, instance, **kwargs):
    name = instance.name
    transaction.on_commit(lambda: mirror.unpublish_model(name))


@receiver(post_save, sender=Price)
def _price_added(sender, instance, created, **kwargs):
    # Prices are append-only; one in effect now changes what the gateway charges at once. One
    # scheduled for later is published when it takes effect (billing.spend.republish_prices).
    if created:
        model = instance.model
        transaction.on_commit(lambda: mirror.publish_model(model))
