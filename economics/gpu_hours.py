"""GPU-seconds from the fleet's own history, split into starting, busy, idle and draining.

A worker holds its GPUs (or its CPU slot) from ``placed`` until ``stopped``/``failed``: the
lifecycle events (``provisioning.lifecycle.transition`` writes one per state change) give the
phases — *starting* (placed → ready: loading weights, paid for but not serving), *serving*
(ready → draining or the end) and *draining* (draining → the end). Serving time is split into
busy and idle by the sampler's measured busy fraction for that worker in the month
(``UtilizationHour``); a worker with no samples has its serving time reported as unmeasured
(``sampled`` False) and counted idle, which is the cautious side for a margin.

GPU-seconds are seconds × GPUs held; CPU-engine replicas count CPU-slot-seconds instead. Cost is
hours × the rate that applies (``CostRate``: node override, else the GPU type's, else the fleet
default). Rates are the current ones: a rate change re-prices past months (the audit trail keeps
what they were).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from django.db.models import Sum
from django.utils import timezone

from economics.models import CostRate, UtilizationHour
from provisioning.constants import EventKind
from provisioning.models import Gpu, Worker, WorkerEvent

# Which phase each lifecycle event starts (None: the worker no longer holds anything).
_PHASE_AFTER: dict[str, str | None] = {
    EventKind.PLACED: "starting",
    EventKind.READY: "serving",
    EventKind.DRAINING: "draining",
    EventKind.STOPPED: None,
    EventKind.FAILED: None,
}
HOUR = Decimal(3600)
# How the reconciler words the drain of a replica its deployment no longer wants (desired 0 here).
SCALED_TO_ZERO = "scaled down to 0"


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """``"2026-03"`` → ``[2026-03-01 00:00 UTC, 2026-04-01 00:00 UTC)``; ValueError if malformed."""
    first = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    nxt = (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )
    return first, nxt


@dataclass
class Rate:
    gpu_hour: Decimal = Decimal("0")
    cpu_slot_hour: Decimal = Decimal("0")


@dataclass
class WorkerTime:
    """One worker's time in the window, in seconds (phase seconds are wall time, not × GPUs)."""

    worker_id: str
    deployment_id: str
    model: str
    node: str
    gpu_type: str
    gpus: int
    cpu_slots: int
    min_replicas: int
    idle_timeout_s: int
    rate: Rate
    starting_s: float = 0.0
    serving_s: float = 0.0
    draining_s: float = 0.0
    busy_fraction: float | None = None  # None: no samples
    scaled_to_zero: bool = False  # drained within the window because its deployment scaled to zero

    @property
    def held_s(self) -> float:
        return self.starting_s + self.serving_s + self.draining_s

    @property
    def busy_s(self) -> float:
        return self.serving_s * (self.busy_fraction or 0.0)

    @property
    def idle_s(self) -> float:
        return self.serving_s - self.busy_s

    @property
    def per_hour(self) -> Decimal:
        return self.gpus * self.rate.gpu_hour + self.cpu_slots * self.rate.cpu_slot_hour

    def cost_of(self, seconds: float) -> Decimal:
        return Decimal(str(seconds)) / HOUR * self.per_hour

    @property
    def cost(self) -> Decimal:
        return self.cost_of(self.held_s)

    @property
    def idle_cost(self) -> Decimal:
        return self.cost_of(self.idle_s)

    @property
    def scale_to_zero_idle_s(self) -> float:
        """Idle serving time spent waiting out the scale-to-zero timeout before it was drained."""
        if self.min_replicas or not self.scaled_to_zero:
            return 0.0
        return min(float(self.idle_timeout_s), self.idle_s)


def _rates() -> tuple[dict[str, Rate], dict[str, Rate], Rate]:
    by_node: dict[str, Rate] = {}
    by_type: dict[str, Rate] = {}
    default = Rate()
    for rate in CostRate.objects.select_related("node"):
        value = Rate(rate.gpu_hour, rate.cpu_slot_hour)
        if rate.node_id:
            by_node[str(rate.node_id)] = value
        elif rate.gpu_type:
            by_type[rate.gpu_type] = value
        else:
            default = value
    return by_node, by_type, default


def worker_times(start: datetime, end: datetime, *, now: datetime | None = None) -> list[WorkerTime]:
    """Every worker that held GPUs or a CPU slot in ``[start, end)`` (clipped to ``now``)."""
    now = now or timezone.now()
    stop = min(end, now)
    if stop <= start:
        return []
    terminal_before = WorkerEvent.objects.filter(
        kind__in=(EventKind.STOPPED, EventKind.FAILED), at__lt=start
    ).values("worker_id")
    ids = set(
        WorkerEvent.objects.filter(kind=EventKind.PLACED, at__lt=stop)
        .exclude(worker_id__in=terminal_before)
        .values_list("worker_id", flat=True)
    )
    if not ids:
        return []
    events: dict = defaultdict(list)
    for worker_id, kind, at, message in (
        WorkerEvent.objects.filter(worker_id__in=ids, kind__in=tuple(_PHASE_AFTER), at__lt=stop)
        .order_by("at", "id")
        .values_list("worker_id", "kind", "at", "message")
    ):
        events[worker_id].append((kind, at, message))
    samples = {
        row["worker_id"]: row
        for row in UtilizationHour.objects.filter(worker_id__in=ids, hour__gte=start, hour__lt=stop)
        .values("worker_id")
        .annotate(n=Sum("samples"), busy=Sum("busy_samples"))
    }
    gpu_names = {(g.node_id, g.index): g.name for g in Gpu.objects.all()}
    by_node, by_type, default = _rates()
    out = []
    for worker in Worker.objects.filter(pk__in=ids).select_related("deployment__model", "node"):
        gpus = len(worker.gpu_indices or [])
        gpu_type = ""
        if gpus and worker.node_id:
            gpu_type = gpu_names.get((worker.node_id, worker.gpu_indices[0]), "")
        rate = by_node.get(str(worker.node_id)) or by_type.get(gpu_type) or default
        time = WorkerTime(
            worker_id=str(worker.pk),
            deployment_id=str(worker.deployment_id),
            model=worker.deployment.model.name,
            node=worker.node.name if worker.node else "",
            gpu_type=gpu_type,
            gpus=gpus,
            cpu_slots=1 if worker.cpu_slot is not None and not gpus else 0,
            min_replicas=worker.deployment.min_replicas,
            idle_timeout_s=worker.deployment.idle_seconds,
            rate=rate,
        )
        phase: str | None = None
        since = start
        for kind, at, message in events[worker.pk]:
            moment = max(at, start)
            if phase is not None and moment > since:
                setattr(time, f"{phase}_s", getattr(time, f"{phase}_s") + (moment - since).total_seconds())
            if kind == EventKind.DRAINING and at >= start and message.startswith(SCALED_TO_ZERO):
                time.scaled_to_zero = True
            phase, since = _PHASE_AFTER[kind], moment
        if phase is not None and stop > since:
            setattr(time, f"{phase}_s", getattr(time, f"{phase}_s") + (stop - since).total_seconds())
        row = samples.get(worker.pk)
        if row and row["n"]:
            time.busy_fraction = row["busy"] / row["n"]
        out.append(time)
    out.sort(key=lambda t: (t.model, t.node, t.worker_id))
    return out


@dataclass
class Usage:
    """GPU time and its cost summed over workers (GPU-seconds are seconds × GPUs)."""

    key: str
    starting_gpu_s: float = 0.0
    busy_gpu_s: float = 0.0
    idle_gpu_s: float = 0.0
    draining_gpu_s: float = 0.0
    cpu_slot_s: float = 0.0
    unmeasured_gpu_s: float = 0.0  # serving GPU-seconds of workers without samples (in idle too)
    cost: Decimal = field(default_factory=lambda: Decimal("0"))
    idle_cost: Decimal = field(default_factory=lambda: Decimal("0"))
    scale_to_zero_idle_cost: Decimal = field(default_factory=lambda: Decimal("0"))
    workers: int = 0

    @property
    def serving_gpu_s(self) -> float:
        return self.busy_gpu_s + self.idle_gpu_s

    @property
    def gpu_s(self) -> float:
        return self.starting_gpu_s + self.serving_gpu_s + self.draining_gpu_s

    @property
    def gpu_hours(self) -> float:
        return self.gpu_s / 3600

    @property
    def busy_fraction(self) -> float | None:
        measured = self.serving_gpu_s - self.unmeasured_gpu_s
        return (self.busy_gpu_s / measured) if measured > 0 else None

    def add(self, t: WorkerTime) -> None:
        self.workers += 1
        self.starting_gpu_s += t.starting_s * t.gpus
        self.busy_gpu_s += t.busy_s * t.gpus
        self.idle_gpu_s += t.idle_s * t.gpus
        self.draining_gpu_s += t.draining_s * t.gpus
        self.cpu_slot_s += t.held_s * t.cpu_slots
        if t.busy_fraction is None:
            self.unmeasured_gpu_s += t.serving_s * t.gpus
        self.cost += t.cost
        self.idle_cost += t.idle_cost
        self.scale_to_zero_idle_cost += t.cost_of(t.scale_to_zero_idle_s)


def aggregate(times: list[WorkerTime], by: str) -> dict[str, Usage]:
    """Sum ``times`` by one of ``deployment_id``, ``model``, ``node`` or ``gpu_type``."""
    out: dict[str, Usage] = {}
    for t in times:
        key = getattr(t, by) or ("CPU" if by == "gpu_type" and t.cpu_slots else "")
        out.setdefault(key, Usage(key)).add(t)
    return dict(sorted(out.items()))
