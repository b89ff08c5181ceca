"""A hand-computed fleet month (March 2026): workers with known event times, samples and prices.

Rates: H100 2.00/GPU-hour; node ``b`` overrides to 3.00/GPU-hour and 0.10/CPU-slot-hour; the
fleet default is 1.00/GPU-hour and 0.05/CPU-slot-hour.

* alpha (vLLM, min_replicas 1) — W1 on node a, GPUs 0 and 1: placed Feb 28 23:00, ready Mar 1
  01:00, draining 11:00, stopped 12:00 → in March starting 1 h, serving 10 h (10 samples, 4 busy:
  busy 4 h, idle 6 h), draining 1 h; × 2 GPUs = 24 GPU-h, cost 48.00, idle cost 24.00, all of it
  held by min_replicas (the floor is 1 replica all month).
* beta (vLLM, min_replicas 0, idle timeout 1800 s) on node b (override 3.00): W2 placed Mar 10
  00:00, ready 00:30, draining and stopped 04:30 (8 samples, 2 busy): starting 0.5 h, busy 1 h,
  idle 3 h → cost 13.50; the reconciler drained it ("scaled down to 0"), so its scale-to-zero idle
  is the 1800 s timeout: 0.5 h → 1.50; W3 placed Mar 31 22:00, ready 23:00,
  still ready (no samples): starting 1 h, serving 1 h unmeasured → cost 6.00. beta: 6.5 GPU-h,
  cost 19.50.
* gamma (CPU engine) — W4 on node a, CPU slot 0: placed and ready Mar 5 00:00, failed 10:00 →
  10 CPU-slot-hours at the default 0.05 → 0.50.
* W0 (stopped in February) and W5 (placed in April) do not count.

Usage: alpha 10 M prompt + 5 M completion at 1.00/2.00 → 20.00; beta 2 M + 1 M at 3.00/6.00 →
12.00; gamma 1,000 tokens, no price → 0. One alpha record in February does not count.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from economics.models import CostRate, UtilizationHour
from models_registry.models import Deployment, Price
from provisioning.constants import EventKind, WorkerState
from provisioning.models import Gpu, Worker, WorkerEvent
from tests.billing.usage import record
from tests.factories import TenantFactory
from tests.registry.factories import DeploymentFactory, ModelFactory, NodeFactory

NOW = datetime(2026, 4, 15, tzinfo=UTC)


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def worker(deployment, node, events, *, gpus=(), cpu_slot=None, samples=None, state=WorkerState.STOPPED):
    w = Worker.objects.create(
        deployment=deployment, node=node, gpu_indices=list(gpus), cpu_slot=cpu_slot, state=state, api_key="k"
    )
    for kind, when, *message in events:
        WorkerEvent.objects.create(
            worker=w, deployment=deployment, kind=kind, at=when, message="".join(message)
        )
    if samples:
        hour, n, busy = samples
        UtilizationHour.objects.create(worker=w, hour=hour, samples=n, busy_samples=busy)
    return w


@pytest.fixture
def fleet_month(db):
    node_a = NodeFactory(name="a")
    node_b = NodeFactory(name="b")
    for i in range(2):
        Gpu.objects.create(node=node_a, index=i, name="NVIDIA H100")
    Gpu.objects.create(node=node_b, index=0, name="NVIDIA L4")
    CostRate.objects.create(gpu_type="NVIDIA H100", gpu_hour=Decimal("2.00"))
    CostRate.objects.create(gpu_type="NVIDIA L4", gpu_hour=Decimal("0.70"))  # overridden by node b
    CostRate.objects.create(node=node_b, gpu_hour=Decimal("3.00"), cpu_slot_hour=Decimal("0.10"))
    CostRate.objects.create(gpu_hour=Decimal("1.00"), cpu_slot_hour=Decimal("0.05"))

    alpha = ModelFactory(name="alpha")
    beta = ModelFactory(name="beta")
    gamma = ModelFactory(name="gamma")
    d1 = DeploymentFactory(model=alpha, engine="vllm", min_replicas=1, idle_seconds=300)
    d2 = DeploymentFactory(model=beta, engine="vllm", min_replicas=0, idle_seconds=1800)
    d3 = DeploymentFactory(model=gamma, engine="cpu", min_replicas=0)
    Deployment.objects.filter(pk__in=[d1.pk, d2.pk, d3.pk]).update(created_at=at(2, 1, 0))

    P, R, D, S, F = EventKind.PLACED, EventKind.READY, EventKind.DRAINING, EventKind.STOPPED, EventKind.FAILED
    worker(
        d1, node_a, [(P, at(2, 1, 0)), (R, at(2, 1, 1)), (D, at(2, 15, 0)), (S, at(2, 15, 1))], gpus=[0, 1]
    )
    worker(
        d1,
        node_a,
        [(P, at(2, 28, 23)), (R, at(3, 1, 1)), (D, at(3, 1, 11)), (S, at(3, 1, 12))],
        gpus=[0, 1],
        samples=(at(3, 1, 1), 10, 4),
    )
    worker(
        d2,
        node_b,
        [
            (P, at(3, 10, 0)),
            (R, at(3, 10, 0, 30)),
            (D, at(3, 10, 4, 30), "scaled down to 0"),
            (S, at(3, 10, 4, 30)),
        ],
        gpus=[0],
        samples=(at(3, 10, 1), 8, 2),
    )
    worker(d2, node_b, [(P, at(3, 31, 22)), (R, at(3, 31, 23))], gpus=[0], state=WorkerState.READY)
    worker(d3, node_a, [(P, at(3, 5, 0)), (R, at(3, 5, 0)), (F, at(3, 5, 10))], cpu_slot=0)
    worker(d1, node_a, [(P, at(4, 2, 0)), (R, at(4, 2, 1))], gpus=[0, 1], state=WorkerState.READY)

    start = at(1, 1, 0)
    Price.objects.create(
        model=alpha, input_per_million=Decimal("1"), output_per_million=Decimal("2"), effective_from=start
    )
    Price.objects.create(
        model=beta, input_per_million=Decimal("3"), output_per_million=Decimal("6"), effective_from=start
    )
    tenant = TenantFactory()
    record(tenant, "alpha", at(3, 2, 12), 6_000_000, 3_000_000)
    record(tenant, "alpha", at(3, 20, 8), 4_000_000, 2_000_000)
    record(tenant, "alpha", at(2, 20, 8), 9_000_000, 9_000_000)
    record(tenant, "beta", at(3, 10, 2), 2_000_000, 1_000_000)
    record(tenant, "gamma", at(3, 5, 3), 600, 400)
    return {"alpha": d1, "beta": d2, "gamma": d3, "tenant": tenant}
