"""Celery tasks for the model registry."""

from celery import shared_task

from models_registry import mirror


@shared_task(name="models_registry.tasks.resync_model_mirror")
def resync_model_mirror() -> dict[str, int]:
    """Safety net: make the Redis copy of the registry equal to PostgreSQL."""
    return mirror.resync()
