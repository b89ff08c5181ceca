"""Changing what GPU time costs: every change of a cost rate lands in the audit trail.

A rate re-prices every month the Economics page shows (rates have no history of their own), so
the trail's before/after is the record of what a past report was computed with.
"""

from __future__ import annotations

from django.db import transaction

from audit import trail
from economics.models import CostRate


def save_rate(*, rate: CostRate, request=None, actor=None) -> CostRate:
    """Create or update ``rate`` and audit the change (``cost.changed``)."""
    before = None
    if rate.pk:
        previous = CostRate.objects.select_related("node").filter(pk=rate.pk).first()
        before = previous.as_dict() if previous else None
    with transaction.atomic():
        rate.full_clean()
        rate.save()
        trail.record(
            action="cost.changed",
            actor=actor,
            target=rate,
            summary=f"cost rate for {rate} set to {rate.gpu_hour}/GPU-hour, {rate.cpu_slot_hour}/CPU-slot-hour",
            before=before,
            after=rate.as_dict(),
            request=request,
        )
    return rate


def delete_rate(*, rate: CostRate, request=None, actor=None) -> None:
    with transaction.atomic():
        trail.record(
            action="cost.changed",
            actor=actor,
            target=rate,
            summary=f"cost rate for {rate} removed",
            before=rate.as_dict(),
            after=None,
            request=request,
        )
        rate.delete()
