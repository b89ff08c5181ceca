"""Sending one delivery: claim it, POST the signed event, log the attempt, schedule the next.

A delivery is claimed with a row lock (``skip_locked``) and a lease in ``next_attempt_at``, so the
task queued at emit, a retry and the sweep can all fire for it and it is still sent once per
attempt. Redirects are not followed (each hop would need the address check again); any 2xx is
success; anything else, a timeout or a refused address is a failed attempt, retried after
``BACKOFF_SECONDS`` until ``WEBHOOKS_MAX_ATTEMPTS``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from webhooks import addresses, signing
from webhooks.constants import BACKOFF_SECONDS, SIGNATURE_HEADER, SNIPPET_CHARS, DeliveryState
from webhooks.events import envelope
from webhooks.models import DeliveryAttempt, WebhookDelivery, WebhookEvent

log = logging.getLogger("berth.webhooks")
USER_AGENT = "Berth-Webhooks/1"


@dataclass
class Result:
    attempt: DeliveryAttempt | None
    state: str
    retry_in: int | None = None  # seconds until the next attempt, when one is scheduled


def backoff(attempts: int) -> int:
    return BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1]


def body_of(delivery: WebhookDelivery) -> bytes:
    return orjson.dumps(envelope(delivery.event))


def _claim(delivery_id, now: datetime) -> WebhookDelivery | None:
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("endpoint", "event", "event__tenant")
            .filter(pk=delivery_id, state=DeliveryState.PENDING)
            .first()
        )
        if delivery is None or (delivery.next_attempt_at and delivery.next_attempt_at > now):
            return None  # done, being sent, or not due
        if not delivery.endpoint.enabled:
            delivery.state, delivery.completed_at = DeliveryState.CANCELLED, now
            delivery.save(update_fields=["state", "completed_at"])
            return delivery
        delivery.attempts += 1
        lease = settings.WEBHOOKS_TIMEOUT_SECONDS + 60
        delivery.next_attempt_at = now + timedelta(seconds=lease)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
        return delivery


def _post(delivery: WebhookDelivery, body: bytes) -> tuple[int | None, str, str]:
    """(status, response snippet, error) of one POST to the endpoint's checked address."""
    try:
        target = addresses.resolve(delivery.endpoint.url)
    except addresses.UnsafeURL as exc:
        return None, "", str(exc)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Host": target.host_header,
        "Berth-Event-Id": delivery.event.id,
        "Berth-Event-Type": delivery.event.type,
        "Berth-Delivery-Attempt": str(delivery.attempts),
        SIGNATURE_HEADER: signing.header(delivery.endpoint.secret, body),
    }
    try:
        with httpx.Client(
            timeout=settings.WEBHOOKS_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False
        ) as client:
            response = client.post(
                target.url, content=body, headers=headers, extensions={"sni_hostname": target.host}
            )
    except httpx.HTTPError as exc:
        return None, "", f"{type(exc).__name__}: {exc}"[:300]
    snippet = response.content[:SNIPPET_CHARS].decode("utf-8", "replace")
    return response.status_code, snippet, ""


def attempt(*, delivery_id, now: datetime | None = None) -> Result | None:
    """Make the next attempt of a due delivery; None if there is nothing to do now."""
    now = now or timezone.now()
    delivery = _claim(delivery_id, now)
    if delivery is None:
        return None
    if delivery.state == DeliveryState.CANCELLED:
        log.info("webhook delivery %s cancelled: endpoint disabled", delivery.pk)
        return Result(None, delivery.state)
    body = body_of(delivery)
    started = time.monotonic()
    status, snippet, error = _post(delivery, body)
    latency = int((time.monotonic() - started) * 1000)
    with transaction.atomic():
        logged = DeliveryAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=now,
            status_code=status,
            latency_ms=latency,
            response_snippet=snippet,
            error=error,
        )
        result = Result(logged, DeliveryState.PENDING)
        if logged.ok:
            delivery.state, delivery.next_attempt_at, delivery.completed_at = (
                DeliveryState.SUCCEEDED,
                None,
                timezone.now(),
            )
        elif delivery.attempts >= settings.WEBHOOKS_MAX_ATTEMPTS:
            delivery.state, delivery.next_attempt_at, delivery.completed_at = (
                DeliveryState.FAILED,
                None,
                timezone.now(),
            )
        else:
            result.retry_in = backoff(delivery.attempts)
            delivery.next_attempt_at = now + timedelta(seconds=result.retry_in)
        result.state = delivery.state
        delivery.save(update_fields=["state", "next_attempt_at", "completed_at"])
    log.info(
        "webhook %s to %s attempt %s: %s %s",
        delivery.event.id,
        delivery.endpoint.url,
        delivery.attempts,
        status or error,
        delivery.state,
    )
    return result


def due(*, now: datetime | None = None, limit: int = 500) -> list[str]:
    """Ids of pending deliveries whose next attempt is due (the sweep queues them)."""
    now = now or timezone.now()
    qs = WebhookDelivery.objects.filter(state=DeliveryState.PENDING).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )
    return [str(pk) for pk in qs.order_by("next_attempt_at").values_list("pk", flat=True)[:limit]]


def prune(*, now: datetime | None = None) -> int:
    """Delete events older than ``WEBHOOKS_LOG_DAYS`` with their deliveries and attempts, unless
    a delivery is still pending; returns how many events went."""
    now = now or timezone.now()
    old = WebhookEvent.objects.filter(
        created_at__lt=now - timedelta(days=settings.WEBHOOKS_LOG_DAYS)
    ).exclude(deliveries__state=DeliveryState.PENDING)
    deleted, by_model = old.delete()
    return by_model.get(WebhookEvent._meta.label, 0)
