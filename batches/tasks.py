"""Celery tasks of batches: validation, running lines, and the beat task that keeps them moving.

``validate_batch`` is sent by the Batches API when a batch is created; it hands a valid batch to
``run_batch``. ``run_batch`` works for one slice (``BERTH_BATCH_SLICE_SECONDS``) and sends itself
again while lines are left, so a task stays within the worker's time limits and batches of many
tenants take turns. ``tick`` (beat, ``BERTH_BATCH_TICK_SECONDS``) sends a runner to every active
batch whose advisory lock is free: a batch whose worker was killed resumes, a cancel completes,
an overdue batch expires. A task sent twice for the same batch is harmless: the second finds the
lock taken and returns.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import transaction

from batches import runner
from batches.models import BatchStatus

logger = logging.getLogger(__name__)


@shared_task(name="batches.tasks.validate_batch")
def validate_batch(batch_id: str) -> str:
    status = runner.validate(batch_id)
    if status == BatchStatus.IN_PROGRESS:
        transaction.on_commit(lambda: run_batch.delay(batch_id))
    return status


@shared_task(
    name="batches.tasks.run_batch",
    soft_time_limit=settings.BATCH_SLICE_SECONDS + settings.BATCH_REQUEST_TIMEOUT + 60,
    time_limit=settings.BATCH_SLICE_SECONDS + settings.BATCH_REQUEST_TIMEOUT + 120,
)
def run_batch(batch_id: str) -> str:
    status = runner.run(batch_id)
    if status == BatchStatus.IN_PROGRESS:  # the slice ended with lines left: next turn
        transaction.on_commit(lambda: run_batch.delay(batch_id))
    return status


@shared_task(name="batches.tasks.tick")
def tick() -> int:
    """Send a runner (or a validation) to each active batch that has none; returns how many."""
    sent = 0
    for batch_id, status in runner.active():
        if runner.has_live_runner(batch_id):
            continue
        task = validate_batch if status == BatchStatus.VALIDATING else run_batch
        task.delay(batch_id)
        sent += 1
    if sent:
        logger.info("batches: sent %s runner(s) to batches without one", sent)
    return sent
