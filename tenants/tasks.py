"""Celery tasks for tenants: thin wrappers around the service modules."""

from celery import shared_task

from tenants import mirror


@shared_task
def resync_key_mirror() -> dict[str, int]:
    """Safety net: make the Redis key mirror equal to PostgreSQL."""
    return mirror.resync()
