"""The GPU pool (Node, Gpu) and the replicas running on it (Worker, WorkerEvent).

CPU capacity is explicit and separate from GPUs: a node offers ``cpu_slots`` (an integer, no
rows); a CPU-engine replica takes one slot (``Worker.cpu_slot``), a vLLM replica takes whole GPUs
(``Worker.gpu_indices``). GPUs are not shared between replicas.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from provisioning.constants import EventKind, NodeBackend, NodeStatus, WorkerState
from tenants.models import residency_validator


class Node(models.Model):
    """A host (or Kubernetes node pool) that runs engines; kept current by its node agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    address = models.CharField(max_length=255, help_text="Host/IP the engines listen on and are reached at.")
    backend = models.CharField(max_length=16, choices=NodeBackend.choices, default=NodeBackend.LOCAL)
    labels = models.JSONField(default=dict, blank=True)
    residency = models.CharField(
        max_length=32,
        blank=True,
        validators=[residency_validator],
        help_text="Data-residency label (e.g. eu, us): tenants that require one get their private "
        "models only on nodes with the same label. Empty: none.",
    )
    queue = models.CharField(max_length=120, help_text="Celery queue the node agent consumes.")
    status = models.CharField(max_length=16, choices=NodeStatus.choices, default=NodeStatus.READY)
    cpu_slots = models.PositiveSmallIntegerField(default=0, help_text="CPU-engine replicas it may run.")
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def queue_for(name: str) -> str:
        return f"node.{name}"


class Gpu(models.Model):
    """One GPU of a node, as last reported by its agent (NVML or torch)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=100, blank=True, help_text="GPU model, e.g. NVIDIA H100 80GB HBM3.")
    memory_total_mb = models.PositiveIntegerField(default=0)
    memory_used_mb = models.PositiveIntegerField(default=0)
    utilization = models.PositiveSmallIntegerField(default=0, help_text="Percent.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node__name", "index"]
        verbose_name = "GPU"
        constraints = [models.UniqueConstraint(fields=["node", "index"], name="one_gpu_per_node_index")]

    def __str__(self) -> str:
        return f"{self.node.name}/gpu{self.index}"


class Worker(models.Model):
    """One replica of a Deployment: an engine process (or pod) on a node.

    State machine: pending → starting → ready → draining → stopped | failed; see
    ``provisioning.constants.TRANSITIONS`` and ``provisioning.lifecycle.transition``.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(
        "models_registry.Deployment", on_delete=models.CASCADE, related_name="workers"
    )
    node = models.ForeignKey(Node, null=True, blank=True, on_delete=models.SET_NULL, related_name="workers")
    gpu_indices = models.JSONField(default=list, blank=True)
    cpu_slot = models.PositiveSmallIntegerField(null=True, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    url = models.CharField(max_length=255, blank=True)
    # Only the control plane and the gateway (through the routing table) ever see it.
    api_key = models.CharField(max_length=128, editable=False)
    pid = models.PositiveIntegerField(null=True, blank=True)
    pod_name = models.CharField(max_length=253, blank=True)
    state = models.CharField(max_length=16, choices=WorkerState.choices, default=WorkerState.PENDING)
    restart_count = models.PositiveIntegerField(default=0)
    health_failures = models.PositiveSmallIntegerField(
        default=0, help_text="Consecutive failed /health checks while ready."
    )
    crashed = models.BooleanField(default=False, help_text="Failed by itself (counts for restart backoff).")
    exit_code = models.IntegerField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    pending_reason = models.CharField(max_length=500, blank=True)
    log_path = models.CharField(max_length=500, blank=True)
    replaced = models.BooleanField(default=False, help_text="A replacement has been created for it.")
    start_after = models.DateTimeField(null=True, blank=True, help_text="Restart backoff: not placed before.")
    created_at = models.DateTimeField(default=timezone.now)
    state_changed_at = models.DateTimeField(default=timezone.now)
    placed_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    drain_started_at = models.DateTimeField(null=True, blank=True)
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state"], name="worker_state"),
            models.Index(fields=["deployment", "state"], name="worker_deployment_state"),
        ]

    def __str__(self) -> str:
        return f"{str(self.id)[:8]} ({self.state})"


class WorkerEvent(models.Model):
    """Append-only log of what happened to workers and deployments."""

    worker = models.ForeignKey(Worker, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    deployment = models.ForeignKey(
        "models_registry.Deployment",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="events",
    )
    kind = models.CharField(max_length=16, choices=EventKind.choices)
    message = models.TextField(blank=True)
    # Who asked for it (an operator action); null for the reconciler, autoscaler and node agents.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.kind}: {self.message}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError("Worker events are append-only.")
        super().save(*args, **kwargs)
