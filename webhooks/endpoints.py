"""Creating, changing and deleting webhook endpoints: validated, limited, and audited.

The console and the API both go through here. The secret is returned by ``create`` and
``rotate_secret`` only; everything else shows its last four characters.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from audit import trail
from webhooks import addresses
from webhooks.constants import SUBSCRIBABLE
from webhooks.models import WebhookEndpoint, new_secret


def _snapshot(endpoint: WebhookEndpoint) -> dict:
    return {
        "url": endpoint.url,
        "events": endpoint.events,
        "enabled": endpoint.enabled,
        "description": endpoint.description,
    }


def clean_url(url: str) -> str:
    try:
        addresses.check_syntax(url)
    except addresses.UnsafeURL as exc:
        raise ValidationError({"url": str(exc)}) from None
    if not settings.WEBHOOKS_ALLOW_PRIVATE:
        try:
            addresses.resolve(url)
        except addresses.UnsafeURL as exc:
            raise ValidationError({"url": str(exc)}) from None
    return url


def clean_events(events) -> list[str]:
    allowed = {str(choice) for choice in SUBSCRIBABLE}
    if not isinstance(events, list) or not events:
        raise ValidationError({"events": "Subscribe to at least one event."})
    unknown = [e for e in events if e not in allowed]
    if unknown:
        raise ValidationError(
            {"events": f"Unknown event {unknown[0]!r}; choose from {', '.join(sorted(allowed))}."}
        )
    return sorted(set(events))


def create(
    *, tenant, user, url: str, events: list[str], description: str = "", enabled: bool = True, request=None
) -> WebhookEndpoint:
    url, events = clean_url(url), clean_events(events)
    with transaction.atomic():
        if WebhookEndpoint.objects.for_tenant(tenant).count() >= settings.WEBHOOKS_MAX_ENDPOINTS:
            raise ValidationError(
                f"An organization has at most {settings.WEBHOOKS_MAX_ENDPOINTS} webhook endpoints."
            )
        endpoint = WebhookEndpoint.objects.create(
            tenant=tenant, url=url, events=events, description=description, enabled=enabled, created_by=user
        )
        trail.record(
            action="webhook.created",
            tenant=tenant,
            actor=user,
            target=endpoint,
            request=request,
            summary=f"Webhook endpoint {url} for {', '.join(events)}",
            after=_snapshot(endpoint),
        )
    return endpoint


def update(*, endpoint: WebhookEndpoint, user, request=None, **changes) -> WebhookEndpoint:
    if "url" in changes:
        changes["url"] = clean_url(changes["url"])
    if "events" in changes:
        changes["events"] = clean_events(changes["events"])
    before = _snapshot(endpoint)
    with transaction.atomic():
        for name, value in changes.items():
            setattr(endpoint, name, value)
        endpoint.save()
        after = _snapshot(endpoint)
        if after != before:
            trail.record(
                action="webhook.updated",
                tenant=endpoint.tenant,
                actor=user,
                target=endpoint,
                request=request,
                summary=f"Webhook endpoint {endpoint.url} changed",
                before={k: v for k, v in before.items() if after[k] != v},
                after={k: v for k, v in after.items() if before[k] != v},
            )
    return endpoint


def rotate_secret(*, endpoint: WebhookEndpoint, user, request=None) -> WebhookEndpoint:
    with transaction.atomic():
        endpoint.secret = new_secret()
        endpoint.save(update_fields=["secret", "updated_at"])
        trail.record(
            action="webhook.secret_rotated",
            tenant=endpoint.tenant,
            actor=user,
            target=endpoint,
            request=request,
            summary=f"Signing secret of webhook endpoint {endpoint.url} rotated",
        )
    return endpoint


def delete(*, endpoint: WebhookEndpoint, user, request=None) -> None:
    with transaction.atomic():
        trail.record(
            action="webhook.deleted",
            tenant=endpoint.tenant,
            actor=user,
            target=endpoint,
            request=request,
            summary=f"Webhook endpoint {endpoint.url} deleted",
            before=_snapshot(endpoint),
        )
        endpoint.delete()
