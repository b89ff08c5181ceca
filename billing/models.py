"""Usage records (one per gateway request, append-only) and their hourly rollups.

Records arrive from the gateway's Redis stream through ``billing/usage.py``; invoices are built
from them only. Token counts are integers; prices and amounts live with invoicing, as Decimals.
"""

from __future__ import annotations

from django.db import models


class UsageStatus(models.TextChoices):
    OK = "ok", "Completed"
    CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected (billed for delivered tokens)"
    UPSTREAM_ERROR = "upstream_error", "Engine error"
    ERROR = "error", "Gateway error"


class UsageRecord(models.Model):
    """One metered request. ``request_id`` is unique, so re-delivered events are ignored."""

    request_id = models.CharField(max_length=64, unique=True)
    # No database constraint: usage must land even if the tenant row is being deleted meanwhile.
    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.DO_NOTHING, db_constraint=False, related_name="usage_records"
    )
    api_key_id = models.UUIDField(null=True, blank=True)
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=32)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=24, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    worker_id = models.CharField(max_length=64, blank=True, default="")
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "occurred_at"], name="usage_tenant_time")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.prompt_tokens}+{self.completion_tokens}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UsageHourly(models.Model):
    """Per tenant, model and hour (UTC): counts maintained with every ingested batch."""

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.DO_NOTHING, db_constraint=False, related_name="usage_hours"
    )
    model = models.CharField(max_length=200)
    hour = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "model", "hour"], name="one_rollup_per_tenant_model_hour"
            )
        ]
        ordering = ["-hour"]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.model} {self.hour:%Y-%m-%d %H}:00"
