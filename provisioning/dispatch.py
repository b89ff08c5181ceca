"""Sending start/stop orders to node agents: the one seam between the control plane and Celery.

Orders go to the node's own queue (``node.<name>``) by task name, so the control plane does not
import agent code; they are sent after the surrounding transaction commits.
"""

from __future__ import annotations

from django.db import transaction

START_TASK = "provisioning.tasks.start_engine"
STOP_TASK = "provisioning.tasks.stop_engine"
RECONCILE_TASK = "provisioning.tasks.reconcile"


def send(task_name: str, worker_id, queue: str) -> None:
    from berth.celery import app

    app.send_task(task_name, args=[str(worker_id)], queue=queue)


def start_on_commit(worker_id, queue: str) -> None:
    transaction.on_commit(lambda: send(START_TASK, worker_id, queue))


def stop_on_commit(worker_id, queue: str) -> None:
    transaction.on_commit(lambda: send(STOP_TASK, worker_id, queue))


def reconcile_soon() -> None:
    """Ask the control plane's Celery worker for a reconcile pass now (e.g. right after scaling up from zero)."""
    from berth.celery import app

    app.send_task(RECONCILE_TASK)
