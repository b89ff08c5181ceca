"""Usage and spend figures for the console, the API and spend checks (tenant-scoped always).

Costs here are *estimates* per group (exact cost, rounded for display); the invoice is the bill.
Month-to-date ``spend`` rounds per (model, price, tier, kind) group exactly as an invoice line would.
``cached_tokens`` are the part of ``prompt_tokens`` served from the engine's prefix cache (billed
at the cached-input price); the cache hit rate is cached / prompt tokens. With ``split_tiers`` the
daily rows are per service tier too (default, flex, priority, batch: each priced at its percent).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from billing import money, pricing
from billing.models import ERRORS, UsageRecord
from billing.periods import period_containing
from contract import tiers

# The longest date range the console and the API show or export at once.
MAX_RANGE_DAYS = 366


def day_bounds(first: date, last: date) -> tuple[datetime, datetime]:
    """UTC instants ``[first 00:00, the day after last 00:00)`` for an inclusive range of days."""
    return (
        datetime.combine(first, time.min, tzinfo=UTC),
        datetime.combine(last + timedelta(days=1), time.min, tzinfo=UTC),
    )


@dataclass
class DayModelUsage:
    day: date
    model: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal("0"))  # exact, unrounded
    cached_tokens: int = 0
    # The service tier (rows split by tier), or "" when the row sums every tier.
    service_tier: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cache_hit_rate(self) -> float | None:
        return hit_rate(self.cached_tokens, self.prompt_tokens)


@dataclass
class ModelUsage:
    """One model's usage over a whole range (the per-model summary under the daily rows)."""

    model: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = field(default_factory=lambda: Decimal("0"))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cache_hit_rate(self) -> float | None:
        return hit_rate(self.cached_tokens, self.prompt_tokens)


def hit_rate(cached: int, prompt: int) -> float | None:
    """Cached prompt tokens as a fraction of all prompt tokens (0..1); None without a prompt."""
    return cached / prompt if prompt else None


def records(tenant, start: datetime, end: datetime, api_key_id=None):
    """The tenant's usage records with ``start <= occurred_at < end`` (of one API key if given)."""
    qs = UsageRecord.objects.filter(tenant=tenant, occurred_at__gte=start, occurred_at__lt=end)
    return qs if api_key_id is None else qs.filter(api_key_id=api_key_id)


def usage_by_day(
    tenant, start: datetime, end: datetime, *, api_key_id=None, split_tiers: bool = False
) -> list[DayModelUsage]:
    """Per UTC day and model (and service tier with ``split_tiers``): requests, errors, tokens and
    estimated cost, oldest day first."""
    qs = records(tenant, start, end, api_key_id).annotate(day=TruncDate("occurred_at", tzinfo=UTC))
    rows: dict[tuple, DayModelUsage] = {}
    group = ("day", "model", "billed_tier") if split_tiers else ("day", "model")
    counts = (
        qs.annotate(billed_tier=pricing.billed_tier())
        .values(*group)
        .annotate(
            n=Count("pk"),
            errors=Count("pk", filter=ERRORS),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cached=Sum("cached_tokens"),
        )
    )
    for row in counts:
        tier = row["billed_tier"] if split_tiers else ""
        rows[(row["day"], row["model"], tier)] = DayModelUsage(
            row["day"],
            row["model"],
            row["n"],
            row["errors"],
            row["prompt"] or 0,
            row["completion"] or 0,
            cached_tokens=row["cached"] or 0,
            service_tier=tier,
        )
    for (day,), line in pricing.priced_lines(qs, currency=settings.BILLING_CURRENCY, extra_group=("day",)):
        rows[(day, line.model, line.tier if split_tiers else "")].cost += line.exact_cost()
    return sorted(rows.values(), key=lambda r: (r.day, r.model, _TIER_ORDER.get(r.service_tier, 0)))


_TIER_ORDER = {tier: n for n, tier in enumerate(tiers.BILLED_TIERS)}


def by_model(rows: list[DayModelUsage]) -> list[ModelUsage]:
    """The daily rows summed per model over the range, by model name."""
    out: dict[str, ModelUsage] = {}
    for row in rows:
        line = out.setdefault(row.model, ModelUsage(row.model))
        line.requests += row.requests
        line.errors += row.errors
        line.prompt_tokens += row.prompt_tokens
        line.cached_tokens += row.cached_tokens
        line.completion_tokens += row.completion_tokens
        line.cost += row.cost
    return sorted(out.values(), key=lambda m: m.model)


def totals(rows: list[DayModelUsage]) -> dict:
    out: dict = {
        "requests": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "cached_tokens": 0,
        "completion_tokens": 0,
        "cost": Decimal("0"),
    }
    for row in rows:
        out["requests"] += row.requests
        out["errors"] += row.errors
        out["prompt_tokens"] += row.prompt_tokens
        out["cached_tokens"] += row.cached_tokens
        out["completion_tokens"] += row.completion_tokens
        out["cost"] += row.cost
    out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    out["cache_hit_rate"] = hit_rate(out["cached_tokens"], out["prompt_tokens"])
    return out


def priced(tenant, start: datetime, end: datetime) -> list[pricing.PricedLine]:
    """The tenant's usage in ``[start, end)`` as priced lines in the billing currency."""
    return pricing.priced_lines(records(tenant, start, end), currency=settings.BILLING_CURRENCY)


def rounded_total(lines: list[pricing.PricedLine]) -> Decimal:
    """What an invoice of ``lines`` would total: lines rounded, then summed."""
    currency = settings.BILLING_CURRENCY
    return sum((line.amount(currency) for line in lines), money.round_money(Decimal(0), currency))


def spend(tenant, start: datetime, end: datetime) -> Decimal:
    """What an invoice for usage in ``[start, end)`` would total: lines rounded, then summed."""
    return rounded_total(priced(tenant, start, end))


def period_spend(tenant, now: datetime) -> Decimal:
    period = period_containing(now)
    return spend(tenant, period.start, period.end)


def series_by_model(rows: list[DayModelUsage], days: list[date], value: str = "total_tokens") -> dict:
    """``{model: [value per day]}`` for charts, zero-filled over ``days``."""
    series: dict[str, list] = defaultdict(lambda: [0] * len(days))
    index = {d: i for i, d in enumerate(days)}
    for row in rows:
        if row.day in index:
            series[row.model][index[row.day]] += getattr(row, value)
    return dict(sorted(series.items()))
