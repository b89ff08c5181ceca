"""Demo data: a month of realistic usage and fleet history so a fresh install has something to show.

Everything it creates is registered in ``DemoObject`` (tenants, users, models, deployments, nodes,
cost rates, the plan), and their names start with ``demo-``; ``remove`` deletes exactly those rows
and what hangs off them (usage records, invoices the beat closed for demo tenants, workers,
events, samples), so real data is never touched, even a real tenant whose slug starts ``demo-``.

Nothing here can start an engine: demo deployments have no replicas wanted (``desired_replicas``
and ``min_replicas`` 0), their nodes are cordoned and carry a ``berth-demo`` label the deployments
select, every demo worker is stopped or failed, and the demo models are private to the demo
tenants. Demo API keys have random secrets nobody knows. No audit entries are written (the trail
is append-only; demo rows would outlive ``--remove``).

The shape: traffic follows a working day (low at night, a peak mid-afternoon UTC, quieter
weekends); each chat model runs one replica from morning to late evening and a second one at the
weekday peak; busy samples follow the same curve, so the Economics page shows busy and idle hours
and a scale-to-zero tail. ``cached_tokens`` is filled when the usage record has that field.
"""

from __future__ import annotations

import math
import random
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

from django.db import transaction
from django.db.models import Model as DjangoModel
from django.db.models import QuerySet
from django.utils import timezone

from billing.models import Invoice, UsageRecord
from economics.models import CostRate, DemoObject, UtilizationHour
from models_registry import mirror
from models_registry.constants import Engine, SourceKind, Task, Visibility
from models_registry.models import Deployment, Model, Price
from provisioning.constants import EventKind, NodeStatus, WorkerState
from provisioning.models import Gpu, Node, Worker, WorkerEvent
from tenants import keys
from tenants.constants import KeyKind, Role
from tenants.models import ApiKey, Membership, Plan, Tenant, User

M = TypeVar("M", bound=DjangoModel)
LABEL = {"berth-demo": "true"}
TENANTS = (
    ("demo-acme", "Demo Acme Corp", 1.0),
    ("demo-globex", "Demo Globex", 0.6),
    ("demo-initech", "Demo Initech", 0.3),
)


@dataclass(frozen=True)
class DemoModel:
    name: str
    task: str
    engine: str
    node: str
    gpus: int
    price_in: str
    price_out: str
    requests_per_hour: int  # at the peak, for the biggest tenant
    prompt: int
    completion: int


MODELS = (
    DemoModel("demo-llama-3.1-8b", Task.CHAT, Engine.VLLM, "demo-gpu-h100", 1, "0.20", "0.60", 40, 900, 250),
    DemoModel("demo-qwen2.5-32b", Task.CHAT, Engine.VLLM, "demo-gpu-l40s", 2, "0.80", "2.40", 14, 1500, 400),
    DemoModel("demo-bge-small", Task.EMBEDDING, Engine.CPU, "demo-cpu", 0, "0.02", "0", 30, 300, 0),
)
NODES = (
    ("demo-gpu-h100", "NVIDIA H100 80GB HBM3", 4, 0, "2.49"),
    ("demo-gpu-l40s", "NVIDIA L40S", 4, 0, "0.99"),
    ("demo-cpu", "", 0, 4, ""),
)
CPU_SLOT_HOUR = Decimal("0.04")


def present() -> bool:
    return DemoObject.objects.exists()


def _mark(obj: M) -> M:
    DemoObject.objects.create(model_label=obj._meta.label, object_pk=str(obj.pk))
    return obj


def _marked(model: type[M]) -> QuerySet[M]:
    pks = DemoObject.objects.filter(model_label=model._meta.label).values_list("object_pk", flat=True)
    return model._default_manager.filter(pk__in=list(pks))


def _load(hour: int, weekday: int) -> float:
    """0..1: a working day in UTC, peaking at 14:00, a third of it at weekends."""
    day = 0.08 + 0.92 * math.exp(-(((hour - 14) / 4.5) ** 2))
    return day * (0.35 if weekday >= 5 else 1.0)


@dataclass
class Summary:
    tenants: int = 0
    keys: int = 0
    workers: int = 0
    usage_records: int = 0
    utilization_rows: int = 0
    password: str = ""
    slugs: list[str] = field(default_factory=list)


def create(*, days: int = 30, scale: float = 1.0, now: datetime | None = None, seed: int = 18) -> Summary:
    """Create the demo data unless present (then nothing happens and ``Summary.tenants`` is 0)."""
    if present():
        return Summary()
    now = now or timezone.now()
    rng = random.Random(seed)  # noqa: S311 -- reproducible demo traffic, not secrets
    out = Summary(password=secrets.token_urlsafe(12))
    end = now.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    has_cached = any(f.name == "cached_tokens" for f in UsageRecord._meta.get_fields())
    with transaction.atomic():
        plan = Plan.objects.filter(slug="demo-unlimited").first() or _mark(
            Plan.objects.create(slug="demo-unlimited", name="Demo (no limits)")
        )
        nodes = {}
        for name, gpu_name, gpus, cpu_slots, rate in NODES:
            node = _mark(
                Node.objects.create(
                    name=name,
                    address="demo.invalid",
                    queue=Node.queue_for(name),
                    labels=dict(LABEL),
                    status=NodeStatus.CORDONED,
                    cpu_slots=cpu_slots,
                )
            )
            for i in range(gpus):
                Gpu.objects.create(node=node, index=i, name=gpu_name, memory_total_mb=81_920)
            if (
                gpu_name
                and rate
                and not CostRate.objects.filter(node__isnull=True, gpu_type=gpu_name).exists()
            ):
                _mark(CostRate.objects.create(gpu_type=gpu_name, gpu_hour=Decimal(rate)))
            nodes[name] = node
        if not CostRate.objects.filter(node__isnull=True, gpu_type="").exists():
            _mark(CostRate.objects.create(gpu_hour=Decimal("1.00"), cpu_slot_hour=CPU_SLOT_HOUR))

        tenants = []
        for slug, name, weight in TENANTS:
            tenant = _mark(Tenant.objects.create(name=name, slug=_free_slug(slug), plan=plan))
            members = []
            for role, local in ((Role.OWNER, "owner"), (Role.MEMBER, "dev")):
                user = _mark(
                    User.objects.create_user(email=f"{local}@{tenant.slug}.example", password=out.password)
                )
                User.objects.filter(pk=user.pk).update(email_verified=True)
                Membership.objects.create(user=user, tenant=tenant, role=role)
                members.append(user)
            tenant_keys = [
                _demo_key(tenant, key_name, members[i % len(members)])
                for i, key_name in enumerate(("production", "staging", "notebook"))
            ]
            out.keys += len(tenant_keys)
            out.slugs.append(tenant.slug)
            tenants.append((tenant, weight, tenant_keys))
        out.tenants = len(tenants)

        records: list[UsageRecord] = []
        utilization: list[UtilizationHour] = []
        for spec in MODELS:
            model = _mark(
                Model.objects.create(
                    name=_free_model_name(spec.name),
                    source_kind=SourceKind.HUGGINGFACE,
                    source=f"berth-demo/{spec.name}",
                    task=spec.task,
                    visibility=Visibility.PRIVATE,
                    tensor_parallel_size=max(1, spec.gpus),
                )
            )
            model.allowed_tenants.set([t for t, _, _ in tenants])
            Price.objects.create(
                model=model,
                input_per_million=Decimal(spec.price_in),
                output_per_million=Decimal(spec.price_out),
                effective_from=start - timedelta(days=1),
            )
            deployment = _mark(
                Deployment.objects.create(
                    model=model,
                    engine=spec.engine,
                    min_replicas=0,
                    max_replicas=2,
                    desired_replicas=0,
                    idle_seconds=900,
                    node_selector=dict(LABEL),
                )
            )
            Deployment.objects.filter(pk=deployment.pk).update(created_at=start - timedelta(days=1))
            serving = _worker_history(deployment, nodes[spec.node], spec, start, end, rng, utilization, out)
            records.extend(_usage(model.name, spec, tenants, serving, rng, scale, has_cached))
        UsageRecord.objects.bulk_create(records, batch_size=2000)
        UtilizationHour.objects.bulk_create(utilization, batch_size=2000)
        out.usage_records = len(records)
        out.utilization_rows = len(utilization)
    return out


def _free_slug(slug: str) -> str:
    candidate, n = slug, 1
    while Tenant.objects.filter(slug=candidate).exists():
        n += 1
        candidate = f"{slug}-{n}"
    return candidate


def _free_model_name(name: str) -> str:
    candidate, n = name, 1
    while Model.objects.filter(name=candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _demo_key(tenant: Tenant, name: str, creator: User) -> ApiKey:
    """An inference key row whose secret is thrown away: it shows in the console, opens nothing."""
    pepper_id, digest = keys.hash_secret(secrets.token_urlsafe(24))
    return ApiKey.objects.create(
        tenant=tenant,
        kind=KeyKind.INFERENCE,
        name=name,
        lookup_id=secrets.token_hex(8),
        secret_hash=digest,
        pepper_id=pepper_id,
        created_by=creator,
    )


def _worker(deployment, node, spec, placed, ready, drained, stopped, *, failed=False, slot=0) -> Worker:
    """One stopped (or failed) replica; slot 0 is the last one, so its drain is a scale to zero."""
    worker = Worker.objects.create(
        deployment=deployment,
        node=node,
        gpu_indices=list(range(slot * spec.gpus, (slot + 1) * spec.gpus)) if spec.gpus else [],
        cpu_slot=None if spec.gpus else slot,
        state=WorkerState.FAILED if failed else WorkerState.STOPPED,
        api_key=secrets.token_hex(16),
        created_at=placed,
        placed_at=placed,
        ready_at=ready,
        drain_started_at=None if failed else drained,
        finished_at=stopped,
        state_changed_at=stopped,
        failure_reason="engine exited with code 137 (out of memory)" if failed else "",
        crashed=failed,
    )
    events = [(EventKind.CREATED, placed), (EventKind.PLACED, placed), (EventKind.READY, ready)]
    if failed:
        events.append((EventKind.FAILED, stopped))
    else:
        events += [(EventKind.DRAINING, drained), (EventKind.STOPPED, stopped)]
    WorkerEvent.objects.bulk_create(
        [
            WorkerEvent(worker=worker, deployment=deployment, kind=k, at=at, message=f"demo: {k}")
            for k, at in events
        ]
    )
    return worker


def _worker_history(deployment, node, spec, start, end, rng, utilization, out) -> dict[datetime, list[str]]:
    """Create the workers; returns {hour: [ids of workers serving all of it]} for usage."""
    serving: dict[datetime, list[str]] = {}
    day = start.replace(hour=0)
    while day < end:
        shifts = [(0, 6, 23)]  # (slot, ready hour, drain hour)
        if spec.engine == Engine.CPU:
            shifts = [(0, 0, 24)]
        elif day.weekday() < 5:
            shifts.append((1, 11, 18))
        for slot, first, last in shifts:
            ready = day + timedelta(hours=first)
            drained = day + timedelta(hours=last)
            if ready < start or drained > end:
                continue
            placed = ready - timedelta(minutes=4 if spec.gpus else 1)
            stopped = drained + timedelta(seconds=40)
            failed = spec.engine == Engine.CPU and day.day == 13  # one crash in the month
            if failed:
                drained = stopped = ready + timedelta(hours=9, minutes=17)
            worker = _worker(
                deployment, node, spec, placed, ready, drained, stopped, failed=failed, slot=slot
            )
            out.workers += 1
            hour = ready
            while hour + timedelta(hours=1) <= drained:
                load = _load(hour.hour, hour.weekday()) * (1.0 if slot == 0 else 1.4)
                busy = max(0, min(60, round(60 * min(1.0, load) + rng.uniform(-4, 4))))
                utilization.append(
                    UtilizationHour(
                        worker=worker,
                        hour=hour,
                        samples=60,
                        busy_samples=busy,
                        running_sum=busy * rng.uniform(1.5, 6.0),
                        kv_sum=60 * min(0.95, 0.15 + load * 0.7),
                    )
                )
                serving.setdefault(hour, []).append(str(worker.pk))
                hour += timedelta(hours=1)
        day += timedelta(days=1)
    return serving


def _usage(model_name, spec, tenants, serving, rng, scale, has_cached) -> list[UsageRecord]:
    records = []
    endpoint = "embeddings" if spec.task == Task.EMBEDDING else "chat"
    for hour, worker_ids in sorted(serving.items()):
        for tenant, weight, tenant_keys in tenants:
            mean = spec.requests_per_hour * weight * scale * _load(hour.hour, hour.weekday())
            for _ in range(_poisson(rng, mean)):
                prompt = max(1, int(rng.lognormvariate(math.log(spec.prompt), 0.6)))
                completion = (
                    max(1, int(rng.lognormvariate(math.log(spec.completion), 0.7))) if spec.completion else 0
                )
                failed = rng.random() < 0.01
                fields = {
                    "request_id": f"demo-{uuid.uuid4().hex}",
                    "tenant": tenant,
                    "api_key_id": rng.choice(tenant_keys).pk,
                    "model": model_name,
                    "endpoint": endpoint,
                    "prompt_tokens": prompt,
                    "completion_tokens": 0 if failed else completion,
                    "status": "upstream_error" if failed else "ok",
                    "http_status": 502 if failed else 200,
                    "latency_ms": int(80 + completion * rng.uniform(8, 20)),
                    "ttft_ms": int(rng.uniform(60, 400)) if completion else None,
                    "worker_id": rng.choice(worker_ids),
                    "occurred_at": hour + timedelta(seconds=rng.randrange(3600)),
                }
                if has_cached and endpoint == "chat":
                    fields["cached_tokens"] = int(prompt * rng.choice((0, 0, 0.3, 0.6, 0.9)))
                records.append(UsageRecord(**fields))
    return records


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


@dataclass
class Removed:
    tenants: int = 0
    usage_records: int = 0
    workers: int = 0


def remove() -> Removed:
    """Delete every registered demo row and what hangs off it; real rows are never selected."""
    out = Removed()
    with transaction.atomic():
        tenants = list(_marked(Tenant))
        tenant_ids = [t.pk for t in tenants]
        out.usage_records, _ = UsageRecord.objects.filter(tenant_id__in=tenant_ids).delete()
        Invoice.objects.filter(tenant_id__in=tenant_ids).delete()
        deployments = _marked(Deployment)
        _, deleted = Worker.objects.filter(deployment__in=deployments).delete()
        out.workers = deleted.get(Worker._meta.label, 0)
        WorkerEvent.objects.filter(deployment__in=deployments).delete()
        models = list(_marked(Model))
        deployments.delete()
        Price.objects.filter(model__in=models).delete()
        names = [m.name for m in models]
        Model.objects.filter(pk__in=[m.pk for m in models]).delete()
        # Keys first: removing a member revokes its keys, and a revocation is audited.
        ApiKey.objects.filter(tenant_id__in=tenant_ids).delete()
        for tenant in tenants:
            tenant.delete()
        out.tenants = len(tenants)
        _marked(User).delete()
        _marked(CostRate).delete()
        _marked(Node).delete()
        _marked(Plan).delete()
        DemoObject.objects.all().delete()
        transaction.on_commit(lambda: [mirror.unpublish_model(name) for name in names])
    return out
