"""Choices for nodes, workers and their events."""

from django.db import models


class NodeBackend(models.TextChoices):
    LOCAL = "local", "Local node agent"
    KUBERNETES = "kubernetes", "Kubernetes"


class NodeStatus(models.TextChoices):
    READY = "ready", "Ready"
    LOST = "lost", "Lost (no heartbeat)"
    CORDONED = "cordoned", "Cordoned (no new replicas)"


class WorkerState(models.TextChoices):
    PENDING = "pending", "Pending"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class EventKind(models.TextChoices):
    CREATED = "created", "Created"
    PENDING = "pending", "Waiting for capacity"
    PLACED = "placed", "Placed"
    SPAWNED = "spawned", "Engine process started"
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    REPLACED = "replaced", "Replacement created"
    NODE_LOST = "node_lost", "Node lost"
    SCALED = "scaled", "Scaled"
    INTEGRITY = "integrity", "Model files failed verification"


# The one table of allowed state changes (``provisioning.lifecycle.transition`` enforces it).
TRANSITIONS: dict[str, frozenset[str]] = {
    WorkerState.PENDING: frozenset({WorkerState.STARTING, WorkerState.STOPPED, WorkerState.FAILED}),
    WorkerState.STARTING: frozenset(
        {WorkerState.READY, WorkerState.DRAINING, WorkerState.STOPPED, WorkerState.FAILED}
    ),
    WorkerState.READY: frozenset({WorkerState.DRAINING, WorkerState.FAILED}),
    WorkerState.DRAINING: frozenset({WorkerState.STOPPED, WorkerState.FAILED}),
    WorkerState.STOPPED: frozenset(),
    WorkerState.FAILED: frozenset(),
}
LIVE_STATES = (WorkerState.PENDING, WorkerState.STARTING, WorkerState.READY)
# States in which a worker holds GPUs / CPU slots on its node.
HOLDING_STATES = (WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING)
TERMINAL_STATES = (WorkerState.STOPPED, WorkerState.FAILED)
