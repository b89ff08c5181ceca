"""Cost rates staff set, the hourly utilization rollups the sampler writes, and the demo registry.

Rates are in the billing currency (``BERTH_BILLING_CURRENCY``) so cost and revenue compare
directly. A node's own rate overrides its GPU type's; the fleet default (no node, no GPU type)
covers GPU types without a rate and prices CPU-engine slots.

Utilization is kept as one row per worker and UTC hour (``samples``, ``busy_samples``, sums of the
gauges) instead of one row per sample: a month of a 60 s sampler is 720 rows per worker, not
43,200, and the busy fraction needs only the counts.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

RATE_QUANTUM = Decimal("0.000001")


class CostRate(models.Model):
    """What one GPU-hour (and one CPU-slot-hour) costs the operator, for a node or a GPU type."""

    node = models.OneToOneField(
        "workers.Node",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="cost_rate",
        help_text="Set for a per-node override; empty for a GPU-type rate or the fleet default.",
    )
    gpu_type = models.CharField(
        max_length=100,
        blank=True,
        help_text="GPU model as nodes report it (e.g. NVIDIA H100 80GB HBM3). Empty with no node: "
        "the fleet default.",
    )
    gpu_hour = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal("0"),
        validators=[MinValueValidator(0)],
        help_text="Cost of one GPU for one hour, in the billing currency.",
    )
    cpu_slot_hour = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal("0"),
        validators=[MinValueValidator(0)],
        help_text="Cost of one CPU-engine slot for one hour (node overrides and the default only).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node__name", "gpu_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["gpu_type"], condition=Q(node__isnull=True), name="one_cost_rate_per_gpu_type"
            ),
            models.CheckConstraint(
                condition=Q(node__isnull=True) | Q(gpu_type=""), name="cost_rate_node_or_gpu_type"
            ),
        ]

    def __str__(self) -> str:
        if self.node_id:
            return f"node {self.node}"
        return self.gpu_type or "fleet default"

    def clean(self) -> None:
        if self.node_id and self.gpu_type:
            raise ValidationError(
                "A node override applies to all of the node's GPUs: leave the GPU type empty."
            )

    def as_dict(self) -> dict:
        return {
            "node": str(self.node) if self.node_id else None,
            "gpu_type": self.gpu_type,
            "gpu_hour": str(Decimal(self.gpu_hour).quantize(RATE_QUANTUM)),
            "cpu_slot_hour": str(Decimal(self.cpu_slot_hour).quantize(RATE_QUANTUM)),
        }


class UtilizationHour(models.Model):
    """The sampler's counts for one worker in one UTC hour (see the module docstring)."""

    worker = models.ForeignKey("workers.Worker", on_delete=models.CASCADE, related_name="utilization")
    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    samples = models.PositiveIntegerField(default=0)
    busy_samples = models.PositiveIntegerField(
        default=0, help_text="Samples with requests running or waiting."
    )
    running_sum = models.FloatField(default=0)
    kv_sum = models.FloatField(default=0, help_text="Sum of KV-cache use (0..1) over the samples.")

    class Meta:
        ordering = ["hour"]
        constraints = [
            models.UniqueConstraint(fields=["worker", "hour"], name="one_utilization_row_per_hour")
        ]
        indexes = [models.Index(fields=["hour"], name="utilization_hour")]

    def __str__(self) -> str:
        return f"{self.worker_id} {self.hour:%Y-%m-%d %H}:00 {self.busy_samples}/{self.samples}"


class DemoObject(models.Model):
    """A row ``manage.py demo_data`` created: ``--remove`` deletes exactly these (and what cascades)."""

    model_label = models.CharField(max_length=100, help_text="app_label.ModelName")
    object_pk = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model_label", "object_pk"], name="one_demo_marker_per_row")
        ]

    def __str__(self) -> str:
        return f"{self.model_label} {self.object_pk}"
