"""Worker state changes: the one function that moves a Worker between states, with its event.

A transition is a conditional UPDATE (``WHERE id = … AND state IN (allowed sources)``), so the
reconciler, the autoscaler and node agents can race on the same row and exactly one wins; the
loser gets ``False`` and moves on. Every successful change appends a WorkerEvent.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from provisioning.constants import TRANSITIONS, EventKind, WorkerState
from provisioning.models import Worker, WorkerEvent

if TYPE_CHECKING:
    from tenants.models import User

logger = logging.getLogger(__name__)

_EVENT_FOR_STATE: dict[str, str] = {
    WorkerState.STARTING: EventKind.PLACED,
    WorkerState.READY: EventKind.READY,
    WorkerState.DRAINING: EventKind.DRAINING,
    WorkerState.STOPPED: EventKind.STOPPED,
    WorkerState.FAILED: EventKind.FAILED,
}
_TIMESTAMP_FOR_STATE: dict[str, str] = {
    WorkerState.STARTING: "placed_at",
    WorkerState.READY: "ready_at",
    WorkerState.DRAINING: "drain_started_at",
    WorkerState.STOPPED: "finished_at",
    WorkerState.FAILED: "finished_at",
}


def allowed_sources(target: str) -> list[str]:
    return [str(source) for source, targets in TRANSITIONS.items() if target in targets]


def transition(
    worker: Worker, target: str, *, message: str = "", actor: User | None = None, **fields
) -> bool:
    """Move ``worker`` to ``target`` if its current state allows it; True when it did.

    ``fields`` are written in the same UPDATE; the in-memory ``worker`` is updated on success.
    ``actor`` is the user who asked for the change (None: the system), kept on the event.
    """
    now = timezone.now()
    values = {"state": target, "state_changed_at": now, **fields}
    stamp = _TIMESTAMP_FOR_STATE.get(target)
    if stamp and stamp not in values:
        values[stamp] = now
    if target == WorkerState.FAILED and message and "failure_reason" not in values:
        values["failure_reason"] = message
    if target not in (WorkerState.PENDING,):
        values.setdefault("pending_reason", "")
    with transaction.atomic():
        changed = Worker.objects.filter(pk=worker.pk, state__in=allowed_sources(target)).update(**values)
        if not changed:
            return False
        WorkerEvent.objects.create(
            worker_id=worker.pk,
            deployment_id=worker.deployment_id,
            kind=_EVENT_FOR_STATE.get(target, EventKind.CREATED),
            message=message or f"{target}",
            actor=actor,
            at=now,
        )
    for name, value in values.items():
        setattr(worker, name, value)
    logger.info("worker %s -> %s %s", worker.pk, target, message)
    return True


def record(
    *,
    kind: str,
    message: str,
    worker: Worker | None = None,
    deployment_id=None,
    actor: User | None = None,
) -> WorkerEvent:
    """Append an event that is not a state change (scaled, replaced, node lost, …)."""
    return WorkerEvent.objects.create(
        worker=worker,
        deployment_id=deployment_id or (worker.deployment_id if worker else None),
        kind=kind,
        message=message,
        actor=actor,
    )
