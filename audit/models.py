"""The audit trail: one append-only, hash-chained row per security- or money-relevant action.

Each entry carries the hash of the one before it (``prev_hash``) and its own ``hash`` over a
canonical serialization (``audit.chain``), so a row changed or deleted by hand breaks the chain
where ``manage.py verify_audit_chain`` can see it. The ORM refuses updates and deletes; a
PostgreSQL trigger (migration 0001) refuses them too, except inside the retention job's
transaction, which sets ``berth.audit_prune``.

The tenant and actor are kept as plain ids (no database constraint, nothing cascades) plus a
label, so deleting a tenant or a user neither rewrites history nor is blocked by it.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.constants import ActorKind


class AppendOnly(Exception):
    """An audit entry was about to be changed or deleted through the ORM."""


class AuditEntryQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> AuditEntryQuerySet:
        return self.filter(tenant_id=getattr(tenant, "pk", tenant))

    def update(self, **kwargs):
        raise AppendOnly("audit entries are append-only")

    def delete(self):
        raise AppendOnly("audit entries are append-only (retention prunes them: audit.retention)")


class AuditEntry(models.Model):
    """One action: who did what to which object of which tenant, when, from where."""

    seq = models.BigAutoField(primary_key=True)
    id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices, default=ActorKind.USER)
    actor_label = models.CharField(max_length=254, blank=True)
    tenant = models.ForeignKey(
        "tenants.Tenant",
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    tenant_label = models.CharField(max_length=100, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    summary = models.TextField(blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    # Text, not inet: PostgreSQL would rewrite some IPv6 forms and the row would stop matching its hash.
    ip = models.CharField(max_length=45, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    # The gateway's event id for entries moved in from the audit:events stream (idempotency).
    event_id = models.UUIDField(null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["tenant", "-seq"], name="audit_tenant_seq")]
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_label or self.actor_kind}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnly("audit entries are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly("audit entries are append-only")


class ExportCursor(models.Model):
    """How far one export destination got: the last ``seq`` it was sent (``audit.export``)."""

    destination = models.CharField(max_length=300, unique=True)
    last_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.destination} @ {self.last_seq}"


class ChainHead(models.Model):
    """The newest entry's ``seq`` and ``hash``, written with each append.

    The chain alone cannot show that its newest entries were deleted (the rest still links up);
    the head can: ``verify_audit_chain`` compares it with the last entry.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"head @ {self.last_seq}"
