"""Console: the Usage page's breakdown per API key or per member, with a key filter.

A section of its own (``_usage_breakdown.html``, included by the results partial) fed by
``billing.usage_breakdown``, the module behind ``/api/v1/usage?group_by=…`` too. Its own little
form carries the range along, so the breakdown can be regrouped or filtered without touching the
day-and-model table above it.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

from billing import reports, usage_breakdown
from tenants.constants import PERM_VIEW_BILLING
from tenants.models import ApiKey
from tenants.permissions import allows


def context(request, tenant, start: date, end: date) -> dict:
    group_by = request.GET.get("group_by", "key")
    if group_by not in usage_breakdown.GROUPS:
        group_by = "key"
    key_choices = list(ApiKey.objects.for_tenant(tenant).order_by("name").values_list("pk", "name"))
    raw_key, key_id, error = request.GET.get("key", ""), None, ""
    if raw_key:
        try:
            key_id = uuid.UUID(raw_key)
        except ValueError:
            key_id = None
        if key_id not in {pk for pk, _ in key_choices}:
            key_id, error = None, "That API key is not one of this organization's: showing every key."
    bounds = reports.day_bounds(start, end)
    keyed = usage_breakdown.by_key(tenant, *bounds, api_key_id=key_id)
    rows = keyed if group_by == "key" else usage_breakdown.by_member(tenant, *bounds, api_key_id=key_id)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    return {
        "group_by": group_by,
        "rows": rows,
        "totals": usage_breakdown.totals(rows),
        "keys": [(str(pk), name) for pk, name in key_choices],
        "key": str(key_id) if key_id else "",
        "error": error,
        "chart": usage_breakdown.series_by_key(tenant, *bounds, days, keyed, api_key_id=key_id),
        "can_bill": allows(request.user, tenant, PERM_VIEW_BILLING),
    }
