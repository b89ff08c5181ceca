"""Celery beat tasks of the audit trail: export to the SIEM, retention, the gateway's events."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="audit.tasks.export")
def export() -> int:
    from audit import export as exporting  # noqa: PLC0415

    return exporting.export_pending()


@shared_task(name="audit.tasks.prune")
def prune() -> int:
    from audit import retention  # noqa: PLC0415

    return retention.prune()


@shared_task(name="audit.tasks.consume_gateway_events")
def consume_gateway_events() -> int:
    from audit import gateway_events  # noqa: PLC0415

    return gateway_events.consume()


@shared_task(name="audit.tasks.record_expired_keys")
def record_expired_keys() -> int:
    from audit import expiry  # noqa: PLC0415

    return expiry.record_expired_keys()
