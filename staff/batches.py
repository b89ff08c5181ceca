"""Staff dashboard: the batch backlog per model (what the idle capacity still has to run).

One row per model with active batches (validating, in progress, finalizing, cancelling): how many
batches and tenants, the lines still pending (from each batch's request counts, which the runner
keeps current, so no scan of the lines table), the oldest batch and the nearest deadline. Batches
still being validated do not know their model yet and are shown on a row of their own.
"""

from __future__ import annotations

from django.db.models import Count, F, Min, Sum
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from batches.models import Batch, BatchStatus
from staff.views import staff_required

ACTIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)


def backlog_rows() -> list[dict]:
    rows = (
        Batch.objects.filter(status__in=ACTIVE)
        .values("model")
        .annotate(
            batches=Count("id"),
            tenants=Count("tenant", distinct=True),
            pending=Sum(F("request_total") - F("request_completed") - F("request_failed")),
            oldest=Min("created_at"),
            deadline=Min("expires_at"),
        )
        .order_by("-pending", "model")
    )
    return list(rows)


@staff_required
@require_GET
def batch_backlog(request):
    rows = backlog_rows()
    context = {
        "section": "batches",
        "rows": rows,
        "now": timezone.now(),
        "total_pending": sum(r["pending"] or 0 for r in rows),
    }
    return render(request, "staff/batches.html", context)
