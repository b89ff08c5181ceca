"""The Economics report: per model and month, revenue against the cost of the GPUs that served it.

Revenue is what the month's usage is worth at the prices in effect when it occurred
(``billing.pricing.priced_lines``, exact, not rounded per invoice line), so a month can be read
before its invoices exist. A LoRA adapter's usage (metered under ``<tenant slug>/<name>``) counts
for its base model, whose deployments carry the GPU cost.

Idle cost is split out twice: what ``min_replicas`` keeps idle (the floor's share of the
deployment's idle time: floor replica-seconds ÷ serving replica-seconds, at most all of it) and
what scale-to-zero timeouts cost (the idle time, up to ``idle_seconds``, of a replica the
reconciler drained because its deployment scaled to zero).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone

from billing import money, pricing
from billing.models import UsageRecord
from economics import gpu_hours
from models_registry.models import Deployment, LoraAdapter


@dataclass
class ModelMonth:
    model: str
    requests: int = 0
    tokens: int = 0
    revenue: Decimal = field(default_factory=lambda: Decimal("0"))
    usage: gpu_hours.Usage = field(default_factory=lambda: gpu_hours.Usage(""))
    min_replicas_idle_cost: Decimal = field(default_factory=lambda: Decimal("0"))

    @property
    def cost(self) -> Decimal:
        return self.usage.cost

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def margin_percent(self) -> float | None:
        return float(self.margin / self.revenue * 100) if self.revenue else None

    @property
    def tokens_per_gpu_hour(self) -> float | None:
        return self.tokens / self.usage.gpu_hours if self.usage.gpu_s else None


@dataclass
class Report:
    month: str
    start: datetime
    end: datetime
    currency: str
    models: list[ModelMonth]
    by_node: dict[str, gpu_hours.Usage]
    by_gpu_type: dict[str, gpu_hours.Usage]
    by_deployment: dict[str, gpu_hours.Usage]

    def total(self) -> ModelMonth:
        out = ModelMonth("total")
        for row in self.models:
            out.requests += row.requests
            out.tokens += row.tokens
            out.revenue += row.revenue
            out.min_replicas_idle_cost += row.min_replicas_idle_cost
            for name in (
                "starting_gpu_s",
                "busy_gpu_s",
                "idle_gpu_s",
                "draining_gpu_s",
                "cpu_slot_s",
                "unmeasured_gpu_s",
                "cost",
                "idle_cost",
                "scale_to_zero_idle_cost",
                "workers",
            ):
                setattr(out.usage, name, getattr(out.usage, name) + getattr(row.usage, name))
        return out


def _base_models() -> dict[str, str]:
    return dict(LoraAdapter.objects.values_list("served_name", "base_model__name"))


def build(month: str, *, now: datetime | None = None) -> Report:
    """The report for ``month`` (``YYYY-MM``); ValueError if malformed, CurrencyMismatch possible."""
    now = now or timezone.now()
    start, end = gpu_hours.month_bounds(month)
    currency = settings.BILLING_CURRENCY
    bases = _base_models()
    rows: dict[str, ModelMonth] = {}

    def row(name: str) -> ModelMonth:
        name = bases.get(name, name)
        return rows.setdefault(name, ModelMonth(name))

    records = UsageRecord.objects.filter(occurred_at__gte=start, occurred_at__lt=end)
    for item in records.values("model").annotate(
        n=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    ):
        target = row(item["model"])
        target.requests += item["n"] or 0
        target.tokens += (item["prompt"] or 0) + (item["completion"] or 0)
    for line in pricing.priced_lines(records, currency=currency):
        row(line.model).revenue += line.exact_cost()

    times = gpu_hours.worker_times(start, end, now=now)
    for t in times:
        row(t.model).usage.add(t)
    by_deployment = gpu_hours.aggregate(times, "deployment_id")
    window_end = min(end, now)
    for deployment in Deployment.objects.filter(
        pk__in=list(by_deployment), min_replicas__gt=0
    ).select_related("model"):
        usage = by_deployment[str(deployment.pk)]
        serving_replica_s = sum(t.serving_s for t in times if t.deployment_id == str(deployment.pk))
        floor_s = deployment.min_replicas * max(
            0.0, (window_end - max(start, deployment.created_at)).total_seconds()
        )
        if serving_replica_s > 0:
            share = min(Decimal(1), Decimal(str(floor_s)) / Decimal(str(serving_replica_s)))
            row(deployment.model.name).min_replicas_idle_cost += usage.idle_cost * share
    for name, value in rows.items():
        value.usage.key = name
    return Report(
        month=month,
        start=start,
        end=end,
        currency=currency,
        models=sorted(rows.values(), key=lambda r: r.model),
        by_node=gpu_hours.aggregate(times, "node"),
        by_gpu_type=gpu_hours.aggregate(times, "gpu_type"),
        by_deployment=by_deployment,
    )


def _money(value: Decimal, currency: str) -> str:
    rounded = money.round_money(value, currency)
    return str(rounded if rounded else abs(rounded))  # never "-0.00"


def _usage_dict(usage: gpu_hours.Usage, currency: str) -> dict:
    fraction = usage.busy_fraction
    return {
        "gpu_hours": round(usage.gpu_hours, 4),
        "starting_gpu_hours": round(usage.starting_gpu_s / 3600, 4),
        "busy_gpu_hours": round(usage.busy_gpu_s / 3600, 4),
        "idle_gpu_hours": round(usage.idle_gpu_s / 3600, 4),
        "draining_gpu_hours": round(usage.draining_gpu_s / 3600, 4),
        "unmeasured_gpu_hours": round(usage.unmeasured_gpu_s / 3600, 4),
        "cpu_slot_hours": round(usage.cpu_slot_s / 3600, 4),
        "busy_fraction": round(fraction, 4) if fraction is not None else None,
        "cost": _money(usage.cost, currency),
        "idle_cost": _money(usage.idle_cost, currency),
        "scale_to_zero_idle_cost": _money(usage.scale_to_zero_idle_cost, currency),
        "workers": usage.workers,
    }


def model_dict(row: ModelMonth, currency: str) -> dict:
    per_hour = row.tokens_per_gpu_hour
    margin_percent = row.margin_percent
    return {
        "model": row.model,
        "requests": row.requests,
        "tokens": row.tokens,
        "revenue": _money(row.revenue, currency),
        "margin": _money(row.margin, currency),
        "margin_percent": round(margin_percent, 2) if margin_percent is not None else None,
        "tokens_per_gpu_hour": round(per_hour, 1) if per_hour is not None else None,
        "min_replicas_idle_cost": _money(row.min_replicas_idle_cost, currency),
        **_usage_dict(row.usage, currency),
    }


def as_dict(report: Report) -> dict:
    """The JSON the staff API answers and the page's charts read."""
    c = report.currency
    return {
        "month": report.month,
        "currency": c,
        "models": [model_dict(r, c) for r in report.models],
        "total": model_dict(report.total(), c),
        "by_node": [{"node": k, **_usage_dict(v, c)} for k, v in report.by_node.items()],
        "by_gpu_type": [{"gpu_type": k, **_usage_dict(v, c)} for k, v in report.by_gpu_type.items()],
        "by_deployment": [{"deployment": k, **_usage_dict(v, c)} for k, v in report.by_deployment.items()],
    }


CSV_COLUMNS = (
    "model",
    "requests",
    "tokens",
    "revenue",
    "cost",
    "margin",
    "margin_percent",
    "gpu_hours",
    "starting_gpu_hours",
    "busy_gpu_hours",
    "idle_gpu_hours",
    "draining_gpu_hours",
    "unmeasured_gpu_hours",
    "cpu_slot_hours",
    "busy_fraction",
    "tokens_per_gpu_hour",
    "idle_cost",
    "min_replicas_idle_cost",
    "scale_to_zero_idle_cost",
)
