"""Celery tasks of outbound webhooks; each is safe to run twice (claims, unique event keys)."""

from __future__ import annotations

import logging
from datetime import UTC, timedelta

from celery import shared_task
from django.utils import timezone

from tenants.models import Tenant
from webhooks import delivery, events
from webhooks.constants import EventType

log = logging.getLogger("berth.webhooks")


@shared_task(name="webhooks.tasks.deliver")
def deliver(delivery_id: str) -> str:
    result = delivery.attempt(delivery_id=delivery_id)
    if result is None:
        return "nothing due"
    if result.retry_in is not None:
        deliver.apply_async(args=(delivery_id,), countdown=result.retry_in)
    return result.state


@shared_task(name="webhooks.tasks.sweep")
def sweep() -> int:
    """Queue every due delivery (a retry whose task was lost, a worker that died mid-attempt), and
    drop the log older than ``WEBHOOKS_LOG_DAYS``."""
    ids = delivery.due()
    for delivery_id in ids:
        deliver.delay(delivery_id)
    delivery.prune()
    return len(ids)


@shared_task(name="webhooks.tasks.usage_daily")
def usage_daily() -> int:
    """``usage.daily`` for yesterday (UTC) to every tenant with a subscribed endpoint."""
    day = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    sent = 0
    tenant_ids = (
        Tenant.objects.filter(
            webhook_endpoints__enabled=True, webhook_endpoints__events__contains=[EventType.USAGE_DAILY]
        )
        .values_list("pk", flat=True)
        .distinct()
    )
    for tenant in Tenant.objects.filter(pk__in=list(tenant_ids)).order_by("slug"):
        try:
            sent += events.usage_daily(tenant=tenant, day=day) is not None
        except Exception:  # noqa: BLE001 - one tenant's failure must not stop the others
            log.exception("usage.daily failed for %s", tenant.slug)
    return sent
