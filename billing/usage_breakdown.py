"""Usage per API key and per member (the member who created the key), for the console and the API.

A team sharing one organization wants to know whose integration spends what. Usage records carry
the key's id (``api_key_id``), keys carry their creator (``ApiKey.created_by``), so both views are
a group-by over the tenant's records; costs are estimates priced like ``billing.reports``. Requests
without a key (none today, kept for the console's own requests) and keys whose creator was deleted
get their own rows rather than vanishing from the totals.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from billing import pricing, reports
from billing.models import ERRORS
from tenants.models import ApiKey

NO_KEY = "No API key"
UNKNOWN_MEMBER = "Deleted user"
GROUPS = ("key", "member")
# Keys drawn as their own series in the chart; the rest are summed as "Other keys".
CHART_KEYS = 8


@dataclass
class GroupUsage:
    id: str  # the key's id or the member's user id; "" for no key / unknown member
    label: str
    member: str = ""
    revoked: bool = False
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal("0"))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: GroupUsage) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost


def _keys(tenant, ids) -> dict[uuid.UUID, ApiKey]:
    wanted = [i for i in ids if i is not None]
    return ApiKey.objects.filter(tenant=tenant, pk__in=wanted).select_related("created_by").in_bulk()


def _member_label(key: ApiKey | None) -> tuple[str, str]:
    if key is None:
        return "", NO_KEY
    if key.created_by is None:
        return "", UNKNOWN_MEMBER
    return str(key.created_by.pk), key.created_by.email or key.created_by.get_username()


def by_key(tenant, start: datetime, end: datetime, *, api_key_id=None) -> list[GroupUsage]:
    """Per API key over ``[start, end)``, most tokens first."""
    qs = reports.records(tenant, start, end)
    if api_key_id is not None:
        qs = qs.filter(api_key_id=api_key_id)
    counts = qs.values("api_key_id").annotate(
        n=Count("pk"),
        errors=Count("pk", filter=ERRORS),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
    )
    keys = _keys(tenant, [row["api_key_id"] for row in counts])
    groups: dict = {}
    for row in counts:
        key = keys.get(row["api_key_id"])
        _, member = _member_label(key) if row["api_key_id"] else ("", "")
        groups[row["api_key_id"]] = GroupUsage(
            id=str(row["api_key_id"] or ""),
            label=key.name if key else (NO_KEY if row["api_key_id"] is None else "Deleted key"),
            member=member,
            revoked=bool(key and key.revoked_at),
            requests=row["n"],
            errors=row["errors"],
            prompt_tokens=row["prompt"] or 0,
            completion_tokens=row["completion"] or 0,
        )
    for (key_id,), line in pricing.priced_lines(
        qs, currency=settings.BILLING_CURRENCY, extra_group=("api_key_id",)
    ):
        groups[key_id].cost += line.exact_cost()
    return sorted(groups.values(), key=lambda g: (-g.total_tokens, g.label))


def by_member(tenant, start: datetime, end: datetime, *, api_key_id=None) -> list[GroupUsage]:
    """Per member who created the keys used over ``[start, end)``, most tokens first."""
    rows = by_key(tenant, start, end, api_key_id=api_key_id)
    keys = _keys(tenant, [uuid.UUID(row.id) for row in rows if row.id])
    members: dict[str, GroupUsage] = {}
    for row in rows:
        member_id, label = _member_label(keys.get(uuid.UUID(row.id)) if row.id else None)
        group = members.setdefault(member_id or label, GroupUsage(id=member_id, label=label))
        group.add(row)
    return sorted(members.values(), key=lambda g: (-g.total_tokens, g.label))


def series_by_key(
    tenant, start: datetime, end: datetime, days: list[date], rows: list[GroupUsage], *, api_key_id=None
) -> dict:
    """``{"labels": days, "series": {key name: [tokens per day]}}`` for the console's chart."""
    shown = {row.id: row.label for row in rows[:CHART_KEYS]}
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[int]] = {}
    qs = (
        reports.records(tenant, start, end, api_key_id)
        .annotate(day=TruncDate("occurred_at", tzinfo=UTC))
        .values("day", "api_key_id")
        .annotate(tokens=Sum("prompt_tokens") + Sum("completion_tokens"))
    )
    for row in qs:
        label = shown.get(str(row["api_key_id"] or ""), "Other keys")
        if row["day"] in index:
            series.setdefault(label, [0] * len(days))[index[row["day"]]] += row["tokens"] or 0
    return {"labels": [d.isoformat() for d in days], "series": dict(sorted(series.items()))}


def totals(rows: list[GroupUsage]) -> GroupUsage:
    total = GroupUsage(id="", label="Total")
    for row in rows:
        total.add(row)
    return total
