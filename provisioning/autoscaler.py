"""The autoscaler: move each Deployment's desired replicas between min and max from load.

Signals:

* load — per ready worker, the engine's running + waiting requests: taken from the gateway's
  scrape in Redis (``engine_load``) when it is fresher than ``LOAD_FRESH_SECONDS``, else read from
  the engine's own ``/metrics`` (``provisioning.probe.load``);
* demand — the gateway sets ``demand:<model name>`` (for a minute) when a request for the model
  finds no ready worker. Its presence means "someone is waiting or just asked".

(Names and layout: ``contract``.)

Rules (``decide`` is pure): wanted = ceil(load / target_concurrency). Scale up at once, up to
``max_replicas``; scale down (never below ``min_replicas``, nor below 1 while there is load)
only after load stayed low for ``SCALE_DOWN_DELAY`` seconds; with ``min_replicas == 0`` go to zero
after ``idle_seconds`` with no load and no demand; from zero, demand raises it to 1 (or min).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from berth.redis import get_redis, names
from models_registry.models import Deployment
from provisioning import dispatch, operations, probe
from provisioning.constants import WorkerState
from provisioning.models import Worker
from provisioning.reconciler import AUTOSCALE_LOCK, advisory_lock

logger = logging.getLogger(__name__)
LOAD_FRESH_SECONDS = 10


@dataclass(frozen=True)
class Observation:
    desired: int
    min_replicas: int
    max_replicas: int
    target: int
    load: float
    demand: bool
    idle_for: float | None  # seconds since last activity; None: never active
    low_for: float  # seconds the load has been below the current capacity
    idle_seconds: int
    scale_down_delay: int


def decide(obs: Observation) -> int:
    wanted = math.ceil(obs.load / max(1, obs.target)) if obs.load > 0 else 0
    if obs.demand or obs.load > 0:
        wanted = max(wanted, 1)
    wanted = max(obs.min_replicas, min(obs.max_replicas, wanted))
    if wanted > obs.desired:
        return wanted
    if wanted < obs.desired:
        floor = wanted
        if wanted == 0:
            idle_long_enough = obs.idle_for is None or obs.idle_for >= obs.idle_seconds
            if idle_long_enough:
                return 0  # idle_seconds is the delay for scale-to-zero
            floor = max(1, obs.min_replicas)
        if floor < obs.desired and obs.low_for >= obs.scale_down_delay:
            return floor
    return obs.desired


def gateway_loads(now: float | None = None) -> dict[str, probe.Load]:
    """Fresh per-worker loads the gateway scraped into Redis (``engine_load``); {} if none."""
    now = now or time.time()
    loads = {}
    for worker_id, raw in get_redis().hgetall(names().engine_load()).items():
        try:
            entry = json.loads(raw)
            at = float(entry.get("at", 0))
            at = at / 1000 if at > 1e11 else at  # tolerate milliseconds
            if now - at <= LOAD_FRESH_SECONDS:
                loads[worker_id] = probe.Load(
                    running=float(entry["running"]), waiting=float(entry["waiting"])
                )
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.warning("ignoring malformed engine_load entry for %s", worker_id)
    return loads


def demand_for(model_names: list[str]) -> dict[str, bool]:
    if not model_names:
        return {}
    values = get_redis().mget([names().demand(name) for name in model_names])
    return {name: value is not None for name, value in zip(model_names, values, strict=True)}


def autoscale(*, now: datetime | None = None) -> dict[str, int] | None:
    with advisory_lock(AUTOSCALE_LOCK) as acquired:
        if not acquired:
            return None
        return _pass(now or timezone.now())


def _pass(now: datetime) -> dict[str, int]:
    deployments = list(Deployment.objects.select_related("model"))
    ready = list(Worker.objects.filter(state=WorkerState.READY).exclude(url=""))
    scraped = gateway_loads()
    load: dict = {}
    for worker in ready:
        measured = scraped.get(str(worker.pk)) or probe.load(worker.url, api_key=worker.api_key)
        if measured is not None:
            load[worker.deployment_id] = load.get(worker.deployment_id, 0.0) + measured.total
    demand = demand_for(sorted({d.model.name for d in deployments}))
    changed = 0
    for deployment in deployments:
        current_load = load.get(deployment.pk, 0.0)
        has_demand = demand.get(deployment.model.name, False)
        updates: dict = {}
        if current_load > 0 or has_demand:
            updates["last_active_at"] = now
            deployment.last_active_at = now
        capacity = deployment.desired_replicas * deployment.target_concurrency
        if current_load < capacity and deployment.desired_replicas > 0:
            if deployment.low_load_since is None:
                updates["low_load_since"] = now
                deployment.low_load_since = now
        elif deployment.low_load_since is not None:
            updates["low_load_since"] = None
            deployment.low_load_since = None
        obs = Observation(
            desired=deployment.desired_replicas,
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas,
            target=deployment.target_concurrency,
            load=current_load,
            demand=has_demand,
            idle_for=(now - deployment.last_active_at).total_seconds()
            if deployment.last_active_at
            else (now - deployment.created_at).total_seconds(),
            low_for=(now - deployment.low_load_since).total_seconds() if deployment.low_load_since else 0.0,
            idle_seconds=deployment.idle_seconds,
            scale_down_delay=settings.SCALE_DOWN_DELAY,
        )
        target = decide(obs)
        if target != deployment.desired_replicas:
            updates["low_load_since"] = None
        if not updates:
            continue
        with transaction.atomic():
            Deployment.objects.filter(pk=deployment.pk).update(**updates)
            if target != deployment.desired_replicas:
                from_zero = deployment.desired_replicas == 0
                operations.scale(
                    deployment=deployment,
                    replicas=target,
                    actor=None,
                    reason=f"autoscaler: load {current_load:g}, target {deployment.target_concurrency}"
                    f"/replica{', demand' if has_demand else ''}",
                )
                changed += 1
                if from_zero and target > 0:
                    # Someone is waiting on a cold model: do not wait for the next beat.
                    transaction.on_commit(dispatch.reconcile_soon)
    return {"deployments": len(deployments), "changed": changed}
