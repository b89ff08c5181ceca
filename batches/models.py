"""OpenAI's Files and Batch APIs: uploaded files, batches, and each batch line's one result.

A ``File`` is a tenant's upload (``purpose`` ``batch``) or a batch's output or error file; its bytes
live in the storage backend (``batches.storage``: the filesystem under ``BERTH_DATA_DIR`` or S3),
the row keeps what the API answers. A ``Batch`` follows OpenAI's states. Its input is split into
``BatchLine`` rows when it is validated; each line's result is written once (``status`` leaves
``pending`` once), which makes the runner resumable after any crash, and each line is metered
under its own request id (``BatchLine.request_id``), which makes re-running it bill nothing twice.
"""

from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q
from django.utils import timezone


def _file_id() -> str:
    return "file-" + secrets.token_hex(12)


def _batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


class FilePurpose(models.TextChoices):
    BATCH = "batch", "Batch input"
    BATCH_OUTPUT = "batch_output", "Batch output"
    BATCH_ERROR = "batch_error", "Batch errors"


class File(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=_file_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="files")
    purpose = models.CharField(max_length=16, choices=FilePurpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    # Where the bytes are in the storage backend (a relative name; never shown to the tenant).
    storage_name = models.CharField(max_length=500, blank=True, default="")
    # The API key (or console user) that uploaded it; empty for a batch's output and error files.
    api_key_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Deleting removes the bytes and keeps the row (a batch may still name it), hidden from lists.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"], name="file_tenant_created")]

    def __str__(self) -> str:
        return f"{self.id} {self.filename}"


class BatchEndpoint(models.TextChoices):
    CHAT = "/v1/chat/completions", "Chat completions"
    COMPLETIONS = "/v1/completions", "Completions"
    EMBEDDINGS = "/v1/embeddings", "Embeddings"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating", "Validating"
    FAILED = "failed", "Failed"
    IN_PROGRESS = "in_progress", "In progress"
    FINALIZING = "finalizing", "Finalizing"
    COMPLETED = "completed", "Completed"
    EXPIRED = "expired", "Expired"
    CANCELLING = "cancelling", "Cancelling"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = frozenset(
    {BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)


class Batch(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=_batch_id, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="batches")
    api_key_id = models.UUIDField(null=True, blank=True)
    endpoint = models.CharField(max_length=32, choices=BatchEndpoint.choices)
    input_file = models.ForeignKey(File, on_delete=models.PROTECT, related_name="batches")
    output_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    error_file = models.ForeignKey(File, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    completion_window = models.CharField(max_length=8, default="24h")
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.VALIDATING)
    # The model every line names (OpenAI's rule: one model per batch); set at validation.
    model = models.CharField(max_length=200, blank=True, default="")
    request_total = models.PositiveIntegerField(default=0)
    request_completed = models.PositiveIntegerField(default=0)
    request_failed = models.PositiveIntegerField(default=0)
    metadata = models.JSONField(null=True, blank=True)
    # Validation errors in OpenAI's shape: [{"code", "message", "param", "line"}].
    errors = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="batch_tenant_created"),
            models.Index(
                fields=["status", "model"],
                condition=Q(status__in=["validating", "in_progress", "finalizing", "cancelling"]),
                name="batch_active",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"


class LineStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    OK = "ok", "Completed"
    ERROR = "error", "Failed"


class BatchLine(models.Model):
    """One request of a batch and, once run, its one result (written once, never again)."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    index = models.PositiveIntegerField()  # 0-based line number in the input file
    custom_id = models.CharField(max_length=512)
    body = models.JSONField()  # the request body the line asks for
    status = models.CharField(max_length=8, choices=LineStatus.choices, default=LineStatus.PENDING)
    # The gateway request id this line is metered under ("batch_<hex>_<index>"): one usage record.
    request_id = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)  # the endpoint's answer body (status ok)
    error = models.JSONField(null=True, blank=True)  # {"code", "message"} (status error)
    attempts = models.PositiveSmallIntegerField(default=0)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch", "index"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "index"], name="batch_line_index"),
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batch_line_custom_id"),
            models.UniqueConstraint(fields=["request_id"], name="batch_line_request_id"),
        ]
        indexes = [
            models.Index(fields=["batch", "index"], condition=Q(status="pending"), name="batch_line_pending")
        ]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.custom_id} {self.status}"
