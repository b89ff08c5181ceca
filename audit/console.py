"""The console's "Audit log" page and its CSV: the current tenant's entries, newest first.

Owners and admins only (``audit.filters.PERM_VIEW_AUDIT``); the query is scoped to the tenant the
guard resolved, so another tenant's entries cannot appear whatever the filter says.
"""

from __future__ import annotations

import csv
import json

from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from audit import filters
from audit.models import AuditEntry
from console.access import NoTenant, tenant_required
from tenants.models import Tenant

PAGE_SIZE = 50
CSV_BATCH = 2000
DENIED = "Only owners and admins can read the audit log."
CSV_COLUMNS = (
    "time", "seq", "action", "actor_kind", "actor", "target_type", "target_id", "summary", "before", "after",
    "ip", "user_agent", "hash",
)  # fmt: skip


def _entries(tenant: Tenant, form: filters.AuditFilterForm):
    queryset = AuditEntry.objects.for_tenant(tenant)
    return filters.apply(queryset, form.cleaned_data) if form.is_valid() else queryset.none()


@tenant_required(perm=filters.PERM_VIEW_AUDIT, denied=DENIED)
def audit_log(request, tenant: Tenant):
    form = filters.AuditFilterForm(request.GET)
    page = Paginator(_entries(tenant, form).order_by("-seq"), PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    return render(request, "console/audit.html", context, status=200 if form.is_valid() else 400)


class _Echo:
    def write(self, value):
        return value


@tenant_required(perm=filters.PERM_VIEW_AUDIT, denied=DENIED, if_no_tenant=NoTenant.NOT_FOUND)
def audit_csv(request, tenant: Tenant):
    form = filters.AuditFilterForm(request.GET)
    if not form.is_valid():
        errors = "; ".join(f"{field}: {' '.join(errs)}" for field, errs in form.errors.items())
        return HttpResponse(f"Invalid filter. {errors}", status=400, content_type="text/plain; charset=utf-8")
    queryset = _entries(tenant, form)

    def rows():
        writer = csv.writer(_Echo())
        yield writer.writerow(CSV_COLUMNS)
        last = None
        while True:
            batch = queryset.order_by("-seq")
            if last is not None:
                batch = batch.filter(seq__lt=last)
            chunk = list(batch[:CSV_BATCH])
            if not chunk:
                return
            yield "".join(writer.writerow(_row(entry)) for entry in chunk)
            last = chunk[-1].seq

    # Built whole, in keyset batches: a tenant's trail is bounded by retention and the filter.
    response = HttpResponse("".join(rows()), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="berth-audit-{tenant.slug}-{timezone.now():%Y%m%d-%H%M%S}.csv"'
    )
    response["Cache-Control"] = "private, no-store"
    return response


def _row(entry: AuditEntry) -> list:
    return [
        entry.created_at.isoformat(),
        entry.seq,
        entry.action,
        entry.actor_kind,
        entry.actor_label,
        entry.target_type,
        entry.target_id,
        entry.summary,
        json.dumps(entry.before, sort_keys=True) if entry.before is not None else "",
        json.dumps(entry.after, sort_keys=True) if entry.after is not None else "",
        entry.ip,
        entry.user_agent,
        entry.hash,
    ]
