"""Retention: entries older than ``BERTH_AUDIT_RETENTION_DAYS`` are deleted, the cut recorded.

The deletion and an ``audit.pruned`` entry carrying the cut (the last deleted entry's ``seq`` and
``hash``, which the oldest remaining entry links to) commit together, under the chain's lock, so
``verify_audit_chain`` still passes: it accepts a first entry whose ``prev_hash`` is such a cut.
With an export configured, nothing the export has not sent yet is deleted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit import export, trail
from audit.constants import PRUNED, ActorKind
from audit.models import AuditEntry

logger = logging.getLogger(__name__)


def prune(*, now: datetime | None = None, days: int | None = None) -> int:
    """Delete what is past retention; how many entries went (0 with retention off)."""
    days = settings.AUDIT_RETENTION_DAYS if days is None else days
    if not days:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [trail.CHAIN_LOCK])
        old = AuditEntry.objects.filter(created_at__lt=cutoff)
        exported = export.slowest_cursor()
        if exported is not None:
            old = old.filter(seq__lte=exported)
        last = old.order_by("-seq").values("seq", "hash").first()
        if last is None:
            return 0
        with connection.cursor() as cursor:
            # The trigger lets this transaction delete (migration 0001); nothing else may.
            cursor.execute("SET LOCAL berth.audit_prune = 'on'")
            cursor.execute("DELETE FROM audit_auditentry WHERE seq <= %s", [last["seq"]])
            deleted = cursor.rowcount
            cursor.execute("SET LOCAL berth.audit_prune = 'off'")
        trail.record(
            action=PRUNED,
            actor_kind=ActorKind.SYSTEM,
            actor_label="retention",
            summary=f"deleted {deleted} entries older than {days} days (up to #{last['seq']})",
            after={
                "cut_seq": last["seq"],
                "cut_hash": last["hash"],
                "deleted": deleted,
                "older_than": cutoff.isoformat(),
            },
        )
    logger.info("audit retention deleted %s entries up to #%s", deleted, last["seq"])
    return deleted
