"""``api_key.expired``: a key's expiry is a moment, not an action, so a periodic task records it.

Each key whose ``expires_at`` passed (in the last ``LOOKBACK``, so a long outage of beat still
catches up) and that has no ``api_key.expired`` entry yet gets one, as the system.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from audit import trail
from audit.constants import ActorKind
from audit.models import AuditEntry
from tenants.models import ApiKey

LOOKBACK = timedelta(days=30)


def record_expired_keys(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    expired = ApiKey.objects.filter(
        expires_at__lte=now, expires_at__gt=now - LOOKBACK, revoked_at__isnull=True
    ).select_related("tenant")
    done = set(
        AuditEntry.objects.filter(
            action="api_key.expired", target_id__in=[str(k.pk) for k in expired]
        ).values_list("target_id", flat=True)
    )
    recorded = 0
    for api_key in expired:
        if str(api_key.pk) in done:
            continue
        with transaction.atomic():
            trail.record(
                action="api_key.expired",
                tenant=api_key.tenant,
                actor_kind=ActorKind.SYSTEM,
                target=api_key,
                summary=f"key {api_key.name!r} ({api_key.display_prefix}…) expired",
                after={"expires_at": api_key.expires_at},
            )
        recorded += 1
    return recorded
