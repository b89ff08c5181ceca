"""A tenant's data-residency requirement: which nodes may run its private models.

Owners choose among the residency labels the operator put on nodes (``Node.residency``), or none.
Placement honours it for the tenant's private models (``provisioning.residency``): new replicas
start only on matching nodes, and running ones on other nodes are drained and replaced at the
next reconcile pass, which this asks for at once. Public models are shared and not affected.
Each change is an audit entry (``tenant.data_residency_changed``, before and after).
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from audit import trail
from tenants.constants import Role
from tenants.models import Tenant, residency_validator

logger = logging.getLogger(__name__)


def may_change(membership) -> bool:
    """Owners only: the requirement decides where the organization's data is processed."""
    return membership is not None and membership.role == Role.OWNER


def available_labels() -> list[str]:
    """Residency labels that some node carries, sorted."""
    from provisioning.models import Node

    return sorted(set(Node.objects.exclude(residency="").values_list("residency", flat=True)))


def set_requirement(*, tenant: Tenant, label: str) -> Tenant:
    """Require ``label`` (empty: no requirement) for ``tenant``'s private models."""
    label = (label or "").strip().lower()
    if label:
        residency_validator(label)
        if label != tenant.data_residency and label not in available_labels():
            raise ValidationError(f"No node has the residency label {label!r}.", code="unknown_residency")
    if label == tenant.data_residency:
        return tenant
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().only("data_residency").get(pk=tenant.pk)
        before = locked.data_residency
        if before == label:
            tenant.data_residency = label
            return tenant
        tenant.data_residency = label
        tenant.save(update_fields=["data_residency"])
        trail.record(
            action="tenant.data_residency_changed",
            tenant=tenant,
            target=tenant,
            summary=f"data residency {label or 'none'} (was {before or 'none'})",
            before={"data_residency": before},
            after={"data_residency": label},
        )
        transaction.on_commit(_reconcile_soon)
    logger.info("tenant %s requires data residency %r", tenant.slug, label)
    return tenant


def _reconcile_soon() -> None:
    from provisioning import dispatch

    try:
        dispatch.reconcile_soon()
    except Exception:  # the periodic pass applies it anyway
        logger.warning("could not ask for a reconcile pass; the next periodic one applies the residency")
