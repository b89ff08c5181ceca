"""Celery tasks for provisioning: thin wrappers that reload rows and call the service modules.

``reconcile`` and ``autoscale`` run on the control plane's Celery worker (beat schedules them);
``start_engine``/``stop_engine`` are sent to one node's queue and run inside its node agent.
"""

from __future__ import annotations

from celery import shared_task

from provisioning import agent, autoscaler, reconciler


@shared_task(name="provisioning.tasks.reconcile")
def reconcile() -> dict | None:
    return reconciler.reconcile()


@shared_task(name="provisioning.tasks.autoscale")
def autoscale() -> dict | None:
    return autoscaler.autoscale()


@shared_task(name="provisioning.tasks.start_engine", acks_late=False)
def start_engine(worker_id: str) -> str:
    if agent.current is None:
        return "not a node agent"
    return agent.current.start(worker_id)


@shared_task(name="provisioning.tasks.stop_engine", acks_late=False)
def stop_engine(worker_id: str) -> str:
    if agent.current is None:
        return "not a node agent"
    return agent.current.stop(worker_id)
