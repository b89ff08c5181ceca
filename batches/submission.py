"""Creating, listing and cancelling batches: the API side of OpenAI's batch states.

Creating checks what OpenAI checks at once (the endpoint, ``completion_window`` ``24h``, metadata
of at most 16 string pairs, an input file of the tenant's with purpose ``batch``), stores the batch
as ``validating`` and, once committed, hands it to the runner by task name
(``batches.tasks.validate_batch``), which splits the lines and takes it from there.

Cancelling follows OpenAI: a ``validating`` or ``in_progress`` batch becomes ``cancelling`` (the
runner stops sending its lines and finishes it as ``cancelled`` with files for what had finished);
cancelling a ``cancelling`` batch answers it unchanged; any other state is a 409.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from batches import files
from batches.errors import ApiError, not_found
from batches.models import Batch, BatchEndpoint, BatchStatus, FilePurpose
from berth.celery import app as celery_app

logger = logging.getLogger(__name__)

VALIDATE_TASK = "batches.tasks.validate_batch"
COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
CANCELLABLE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)


def tenant_batches(tenant: Any) -> QuerySet[Batch]:
    return Batch.objects.filter(tenant=tenant)


def get_batch(*, tenant: Any, batch_id: str) -> Batch:
    batch = tenant_batches(tenant).filter(pk=batch_id).first()
    if batch is None:
        raise not_found("batch", batch_id)
    return batch


def _required(value: object, name: str) -> None:
    if value is None or value == "":
        raise ApiError(
            400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )


def check_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise ApiError(
            400, "'metadata' must be an object of string pairs.", param="metadata", code="invalid_type"
        )
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ApiError(
            400,
            f"'metadata' may have at most {MAX_METADATA_PAIRS} pairs.",
            param="metadata",
            code="invalid_value",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise ApiError(
                400,
                f"'metadata' keys may be at most {MAX_METADATA_KEY} characters.",
                param=f"metadata.{key[:64]}",
                code="invalid_value",
            )
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            raise ApiError(
                400,
                f"'metadata' values must be strings of at most {MAX_METADATA_VALUE} characters.",
                param=f"metadata.{key}",
                code="invalid_value",
            )
    return metadata


def create_batch(
    *,
    tenant: Any,
    input_file_id: object,
    endpoint: object,
    completion_window: object,
    metadata: object = None,
    api_key_id: Any = None,
) -> Batch:
    _required(input_file_id, "input_file_id")
    _required(endpoint, "endpoint")
    _required(completion_window, "completion_window")
    if endpoint not in BatchEndpoint.values:
        raise ApiError(
            400,
            f"Invalid 'endpoint': {str(endpoint)[:100]!r}. Supported: {', '.join(BatchEndpoint.values)}.",
            param="endpoint",
            code="invalid_value",
        )
    if completion_window not in COMPLETION_WINDOWS:
        raise ApiError(
            400,
            f"Invalid 'completion_window': {str(completion_window)[:20]!r}. Supported: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    checked_metadata = check_metadata(metadata)
    if not isinstance(input_file_id, str):
        raise ApiError(400, "'input_file_id' must be a string.", param="input_file_id", code="invalid_type")
    try:
        input_file = files.get_file(tenant=tenant, file_id=input_file_id)
    except ApiError as exc:
        exc.param = "input_file_id"
        raise
    if input_file.purpose != FilePurpose.BATCH:
        raise ApiError(
            400,
            f"File {input_file.id} has purpose '{input_file.purpose}'; a batch's input must have purpose 'batch'.",
            param="input_file_id",
            code="invalid_value",
        )
    now = timezone.now()
    with transaction.atomic():
        batch = Batch.objects.create(
            tenant=tenant,
            api_key_id=api_key_id,
            endpoint=endpoint,
            input_file=input_file,
            completion_window=completion_window,
            status=BatchStatus.VALIDATING,
            metadata=checked_metadata,
            created_at=now,
            expires_at=now + COMPLETION_WINDOWS[str(completion_window)],
        )
        batch_id = batch.id
        transaction.on_commit(lambda: celery_app.send_task(VALIDATE_TASK, args=[batch_id]))
    logger.info("tenant %s created %s (%s, input %s)", tenant.pk, batch.id, endpoint, input_file.id)
    return batch


def list_batches(*, tenant: Any, limit: object = None, after: object = None) -> tuple[list[Batch], bool]:
    return files.page(
        tenant_batches(tenant),
        after=after,
        limit=files.parse_limit(limit, default=20, maximum=100),
        order="desc",
        kind="batch",
    )


def cancel_batch(*, tenant: Any, batch_id: str) -> Batch:
    with transaction.atomic():
        batch = tenant_batches(tenant).select_for_update().filter(pk=batch_id).first()
        if batch is None:
            raise not_found("batch", batch_id)
        if batch.status == BatchStatus.CANCELLING:
            return batch
        if batch.status not in CANCELLABLE:
            raise ApiError(
                409,
                f"Cannot cancel a batch with status '{batch.status}'.",
                code="batch_not_cancellable",
            )
        batch.status = BatchStatus.CANCELLING
        batch.cancelling_at = timezone.now()
        batch.save(update_fields=["status", "cancelling_at"])
    logger.info("tenant %s is cancelling %s", tenant.pk, batch.id)
    return batch
