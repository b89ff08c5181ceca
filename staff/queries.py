"""Read-only figures for the staff dashboard: the pool as a picture, revenue, gateway traffic.

Everything here is cross-tenant and meant for staff views only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import redis as redis_lib
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncMonth

from berth.redis import get_redis, names
from billing.models import ANSWERED_STATUSES, SERVER_ERROR, Invoice, InvoiceStatus, UsageRecord
from billing.periods import period_containing
from models_registry.models import Deployment
from provisioning.constants import HOLDING_STATES, LIVE_STATES, TERMINAL_STATES, WorkerState
from provisioning.models import Node, Worker

logger = logging.getLogger("berth.staff")

# --------------------------------------------------------------------------- fleet


@dataclass
class Slot:
    """One GPU or CPU slot of a node, and the worker holding it (None: free)."""

    kind: str  # "gpu" | "cpu"
    index: int
    worker: Worker | None = None
    name: str = ""
    memory_used_mb: int = 0
    memory_total_mb: int = 0
    utilization: int | None = None

    @property
    def memory_percent(self) -> int:
        if not self.memory_total_mb:
            return 0
        return min(100, round(100 * self.memory_used_mb / self.memory_total_mb))


@dataclass
class NodeCard:
    node: Node
    gpus: list[Slot] = field(default_factory=list)
    cpu_slots: list[Slot] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(1 for slot in [*self.gpus, *self.cpu_slots] if slot.worker)

    @property
    def total(self) -> int:
        return len(self.gpus) + len(self.cpu_slots)


def pool() -> list[NodeCard]:
    """Every node with its GPUs and CPU slots, each with the worker that holds it."""
    holders = defaultdict(list)
    for worker in Worker.objects.filter(state__in=HOLDING_STATES, node__isnull=False).select_related(
        "deployment__model"
    ):
        holders[worker.node_id].append(worker)
    cards = []
    for node in Node.objects.prefetch_related("gpus"):
        by_gpu = {i: w for w in holders[node.pk] for i in (w.gpu_indices or [])}
        by_slot = {w.cpu_slot: w for w in holders[node.pk] if w.cpu_slot is not None}
        card = NodeCard(node=node)
        for gpu in node.gpus.all():
            card.gpus.append(
                Slot(
                    kind="gpu",
                    index=gpu.index,
                    worker=by_gpu.get(gpu.index),
                    name=gpu.name,
                    memory_used_mb=gpu.memory_used_mb,
                    memory_total_mb=gpu.memory_total_mb,
                    utilization=gpu.utilization,
                )
            )
        slots = max(node.cpu_slots, max(by_slot, default=-1) + 1)
        card.cpu_slots = [Slot(kind="cpu", index=i, worker=by_slot.get(i)) for i in range(slots)]
        cards.append(card)
    return cards


RECENT_FINISHED = timedelta(hours=1)
WORKERS_SHOWN = 200


def workers(now: datetime) -> list[Worker]:
    """Live and draining workers, plus those that stopped or failed in the last hour; each with
    ``adapters``, the LoRA adapters the gateways loaded on it."""
    recent = Q(state__in=TERMINAL_STATES, state_changed_at__gte=now - RECENT_FINISHED)
    rows = list(
        Worker.objects.filter(~Q(state__in=TERMINAL_STATES) | recent)
        .select_related("deployment__model", "node")
        .order_by("-created_at")[:WORKERS_SHOWN]
    )
    for worker, adapters in zip(rows, lora_adapters([str(w.pk) for w in rows]), strict=True):
        worker.adapters = adapters
    return rows


def lora_adapters(worker_ids: list[str]) -> list[list[str]]:
    """The adapters on each worker, from the gateways' record (``lora:<worker id>`` in Redis);
    empty lists when Redis does not answer, so the page still shows."""
    if not worker_ids:
        return []
    try:
        pipe = get_redis().pipeline(transaction=False)
        for worker_id in worker_ids:
            pipe.hkeys(names().lora_held(worker_id))
        found = pipe.execute()
    except redis_lib.RedisError:
        logger.warning("could not read the workers' LoRA adapters from Redis", exc_info=True)
        return [[] for _ in worker_ids]
    return [sorted(k.decode() if isinstance(k, bytes) else k for k in keys) for keys in found]


def deployments():
    return Deployment.objects.select_related("model").annotate(
        ready=Count("workers", filter=Q(workers__state=WorkerState.READY)),
        live=Count("workers", filter=Q(workers__state__in=LIVE_STATES)),
    )


def deployment(pk) -> Deployment:
    return deployments().get(pk=pk)


# --------------------------------------------------------------------------- tenants


def period_tokens(tenant_ids, now: datetime) -> dict:
    """``{tenant id: tokens}`` in the billing period containing ``now``, in one query."""
    period = period_containing(now)
    rows = (
        UsageRecord.objects.filter(
            tenant_id__in=list(tenant_ids), occurred_at__gte=period.start, occurred_at__lt=period.end
        )
        .values("tenant_id")
        .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    )
    return {row["tenant_id"]: (row["prompt"] or 0) + (row["completion"] or 0) for row in rows}


# --------------------------------------------------------------------------- revenue


@dataclass
class RevenueMonth:
    month: date
    paid: Decimal
    open: Decimal

    @property
    def total(self) -> Decimal:
        return self.paid + self.open


def last_months(now: datetime, count: int = 12) -> list[date]:
    """First days of the ``count`` months ending with ``now``'s, oldest first."""
    year, month = now.year, now.month
    months = []
    for _ in range(count):
        months.append(date(year, month, 1))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months[::-1]


def revenue_by_month(now: datetime, count: int = 12) -> dict[str, list[RevenueMonth]]:
    """``{currency: [RevenueMonth]}``: invoice totals by month of ``period_start`` (UTC), paid vs
    open, for the last ``count`` months, zero-filled; currencies are never summed together."""
    months = last_months(now, count)
    start = datetime(months[0].year, months[0].month, 1, tzinfo=UTC)
    rows = (
        Invoice.objects.filter(period_start__gte=start, status__in=[InvoiceStatus.PAID, InvoiceStatus.OPEN])
        .annotate(month=TruncMonth("period_start", tzinfo=UTC))
        .values("currency", "month", "status")
        .annotate(amount=Sum("total"))
    )
    found: dict = defaultdict(lambda: defaultdict(lambda: {"paid": Decimal("0"), "open": Decimal("0")}))
    for row in rows:
        found[row["currency"]][row["month"].date()][row["status"]] += row["amount"]
    return {
        currency: [RevenueMonth(m, by_month[m]["paid"], by_month[m]["open"]) for m in months]
        for currency, by_month in sorted(found.items())
    }


# --------------------------------------------------------------------------- gateway traffic

# UsageRecord._meta.db_table (a literal, so no SQL is built from strings; a test checks it).
# Errors are counted as everywhere else (billing.models.ERRORS), from the same constants.
TRAFFIC_SQL = """
SELECT date_trunc('minute', occurred_at) AS minute,
       count(*) AS requests,
       coalesce(sum(prompt_tokens + completion_tokens), 0) AS tokens,
       count(*) FILTER (WHERE NOT status = ANY(%s) OR http_status >= %s) AS errors,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
  FROM billing_usagerecord
 WHERE occurred_at >= %s AND occurred_at < %s
 GROUP BY 1
 ORDER BY 1
"""


@dataclass
class TrafficMinute:
    minute: datetime
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def requests_per_s(self) -> float:
        return round(self.requests / 60, 3)

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / 60, 2)

    @property
    def error_rate(self) -> float | None:
        """Percent of requests that failed; None without requests."""
        return round(100 * self.errors / self.requests, 2) if self.requests else None


def traffic(now: datetime, minutes: int = 60) -> list[TrafficMinute]:
    """Per minute over the last ``minutes`` full and current minutes (UTC), zero-filled."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    with connection.cursor() as cursor:
        cursor.execute(TRAFFIC_SQL, [list(ANSWERED_STATUSES), SERVER_ERROR, start, end])
        found = {
            row[0]: TrafficMinute(row[0], row[1], int(row[2]), row[3], row[4], row[5])
            for row in cursor.fetchall()
        }
    out = []
    for i in range(minutes):
        minute = start + timedelta(minutes=i)
        out.append(found.get(minute) or TrafficMinute(minute))
    return out


def traffic_series(rows: list[TrafficMinute]) -> dict:
    """The chart data, JSON-ready."""
    return {
        "labels": [f"{row.minute:%H:%M}" for row in rows],
        "requests_per_s": [row.requests_per_s for row in rows],
        "tokens_per_s": [row.tokens_per_s for row in rows],
        "error_rate": [row.error_rate for row in rows],
        "p50_ms": [row.p50_ms for row in rows],
        "p99_ms": [row.p99_ms for row in rows],
    }
