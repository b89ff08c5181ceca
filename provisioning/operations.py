"""Operator actions on deployments and workers: the one place that scales, drains and restarts.

The Django admin, the staff dashboard, the reconciler and the autoscaler all call these
functions, so an action means the same thing wherever it is started and always leaves an event
saying who did it (``actor``: the signed-in user; None for the reconciler and the autoscaler).

Words, used with one meaning each across Berth:

* **deployment** — a model served with a replica count (``desired_replicas`` between
  ``min_replicas`` and ``max_replicas``); the desired state.
* **worker** — one replica of a deployment: one engine process (or pod) on a node. Nothing else
  is called a worker (Celery processes are "Celery workers", never plain "workers").
* **node** — a host that runs engines; its **node agent** starts and stops engine processes there.
* **engine** — the inference server a worker runs (vLLM or Berth's CPU engine).
* **scale** — set a deployment's desired replicas; the reconciler starts or retires workers to
  match. **Scale to zero** is scaling to 0: every worker drains and none replaces it.
* **retire** — end one worker for good: a pending worker stops at once, any other drains. A
  retired worker never comes back; whether a new one takes its place depends on the deployment's
  desired replicas alone.
* **drain** — drain-and-replace one worker: it leaves routing, finishes its in-flight requests,
  stops, and the reconciler starts a replacement because desired replicas did not change.
* **restart** — retire every live worker of a deployment at once; fresh ones replace them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.db import transaction

from audit import trail
from models_registry.models import Deployment
from provisioning import lifecycle, routing
from provisioning.constants import LIVE_STATES, EventKind, WorkerState
from provisioning.models import Worker

if TYPE_CHECKING:
    from tenants.models import User

logger = logging.getLogger(__name__)


def describe_actor(actor: User | None, *, via: str = "") -> str:
    """``by ops@example.com via staff dashboard``; ``by the system`` when there is no user."""
    if actor is None:
        return "by the system"
    who = getattr(actor, "email", "") or actor.get_username()
    return f"by {who}" + (f" via {via}" if via else "")


def scale(
    *, deployment: Deployment, replicas: int, actor: User | None, via: str = "", reason: str = ""
) -> Deployment:
    """Set desired replicas, kept between 0 and ``max_replicas``; the reconciler converges.

    The event reads ``desired replicas 1 → 3 (<reason> by <user> via <via>)``; the system (the
    autoscaler) passes no actor and says why in ``reason``.
    """
    replicas = max(0, min(replicas, deployment.max_replicas))
    before = deployment.desired_replicas
    why = " ".join(part for part in (reason, describe_actor(actor, via=via) if actor else "") if part)
    with transaction.atomic():
        Deployment.objects.filter(pk=deployment.pk).update(desired_replicas=replicas)
        lifecycle.record(
            kind=EventKind.SCALED,
            message=f"desired replicas {before} → {replicas}" + (f" ({why})" if why else ""),
            deployment_id=deployment.pk,
            actor=actor,
        )
        if actor is not None and before != replicas:  # the autoscaler's moves are fleet events only
            trail.record(
                action="deployment.scaled",
                actor=actor,
                target=deployment,
                summary=f"desired replicas {before} → {replicas}" + (f" ({why})" if why else ""),
                before={"desired_replicas": before},
                after={"desired_replicas": replicas},
            )
    deployment.desired_replicas = replicas
    return deployment


def scale_to_zero(*, deployment: Deployment, actor: User | None, via: str = "") -> Deployment:
    """Scale to 0: every worker drains (finishes in-flight requests, then stops), none replaces it."""
    return scale(deployment=deployment, replicas=0, actor=actor, via=via, reason="scale to zero")


def retire(*, worker: Worker, actor: User | None, reason: str) -> bool:
    """End ``worker`` for good: pending → stopped at once, starting/ready → draining.

    A draining worker leaves the routing table when the transaction commits; the reconciler stops
    it once its engine reports no running request (or the drain timeout passes). False when the
    worker was already draining, stopped or failed.
    """
    if worker.state == WorkerState.PENDING:
        return lifecycle.transition(worker, WorkerState.STOPPED, message=reason, actor=actor)
    model_name = worker.deployment.model.name
    if not lifecycle.transition(worker, WorkerState.DRAINING, message=reason, actor=actor):
        return False
    transaction.on_commit(lambda: routing.remove_worker(model_name, worker.pk))
    return True


def drain(*, worker: Worker, actor: User | None, via: str = "") -> bool:
    """Drain-and-replace one worker: retire it; the unchanged desired replicas bring a new one."""
    with transaction.atomic():
        drained = retire(worker=worker, actor=actor, reason=f"drained {describe_actor(actor, via=via)}")
        if drained and actor is not None:
            trail.record(
                action="deployment.worker_drained",
                actor=actor,
                target=worker.deployment,
                summary=f"worker {worker.pk} drained {describe_actor(actor, via=via)}",
                after={"worker": str(worker.pk)},
            )
    return drained


def drain_ready_workers(*, deployment: Deployment, actor: User | None, via: str = "") -> int:
    """Drain every ready worker of ``deployment`` (each is replaced); how many started draining."""
    ready = Worker.objects.filter(deployment=deployment, state=WorkerState.READY).select_related(
        "deployment__model"
    )
    return sum(drain(worker=worker, actor=actor, via=via) for worker in ready)


def restart(*, deployment: Deployment, actor: User | None, via: str = "") -> int:
    """Retire every live worker at once; the reconciler's next passes start fresh ones.

    Returns how many workers were retired, and records the restart on the deployment.
    """
    by = describe_actor(actor, via=via)
    count = 0
    with transaction.atomic():
        live = Worker.objects.filter(deployment=deployment, state__in=LIVE_STATES).select_related(
            "deployment__model"
        )
        for worker in live:
            count += retire(worker=worker, actor=actor, reason=f"restart requested {by}")
        lifecycle.record(
            kind=EventKind.DRAINING,
            message=f"restart requested {by}: {count} worker(s) replaced",
            deployment_id=deployment.pk,
            actor=actor,
        )
        if actor is not None:
            trail.record(
                action="deployment.restarted",
                actor=actor,
                target=deployment,
                summary=f"restart requested {by}: {count} worker(s) replaced",
                after={"workers_retired": count},
            )
    logger.info("deployment %s restarted %s: %s worker(s)", deployment.pk, by, count)
    return count
