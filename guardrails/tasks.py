"""Celery tasks for guardrails: thin wrappers around the service modules (beat runs them)."""

from celery import shared_task

from guardrails import content, mirror


@shared_task(name="guardrails.tasks.resync_mirror")
def resync_mirror() -> dict[str, int]:
    """Make the Redis guardrails mirror equal to PostgreSQL (and spread a changed default)."""
    return mirror.resync()


@shared_task(name="guardrails.tasks.store_content_log")
def store_content_log() -> int:
    """The gateways' content log stream to ``ContentLog`` (beat, every 10 s)."""
    return content.store()


@shared_task(name="guardrails.tasks.purge_content")
def purge_content() -> int:
    """Delete logged content past each tenant's retention (beat, hourly)."""
    return content.purge()
