"""Celery tasks for tenants: thin wrappers around the service modules."""

from celery import shared_task

from tenants import key_use, mirror


@shared_task(name="tenants.tasks.resync_key_mirror")
def resync_key_mirror() -> dict[str, int]:
    """Safety net: make the Redis key mirror equal to PostgreSQL."""
    return mirror.resync()


@shared_task(name="tenants.tasks.flush_key_last_used")
def flush_key_last_used() -> int:
    """The gateways' key last-use times to PostgreSQL (beat, every 30 s)."""
    return key_use.flush_key_last_used()
