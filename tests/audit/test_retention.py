"""Retention deletes old entries and records the cut; the chain still verifies from the cut."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from audit import export, retention, trail
from audit.models import AuditEntry

pytestmark = pytest.mark.django_db


def _aged(n: int, days_ago: int):
    when = timezone.now() - timedelta(days=days_ago)
    return [trail.record(action="test.old", summary=f"{days_ago}d #{i}", created_at=when) for i in range(n)]


def verify() -> str:
    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    return out.getvalue()


def test_it_deletes_past_retention_and_verification_still_passes():
    old = _aged(3, days_ago=100)
    recent = _aged(2, days_ago=1)
    assert retention.prune(days=90) == 3
    assert not AuditEntry.objects.filter(seq__in=[e.seq for e in old]).exists()
    pruned = AuditEntry.objects.get(action="audit.pruned")
    assert pruned.after["cut_hash"] == old[-1].hash == recent[0].prev_hash
    assert pruned.actor_kind == "system"
    assert "3 entries verified" in verify()  # two recent entries and the audit.pruned entry


def test_it_keeps_everything_when_retention_is_off():
    _aged(2, days_ago=1000)
    assert retention.prune(days=0) == 0
    assert AuditEntry.objects.count() == 2


def test_it_never_deletes_what_the_export_has_not_sent(tmp_path):
    _aged(3, days_ago=100)
    with override_settings(
        AUDIT_EXPORT="file", AUDIT_EXPORT_PATH=str(tmp_path / "a.jsonl"), AUDIT_EXPORT_BATCH=2
    ):
        export.export_pending(max_batches=1)  # two of the three sent
        assert retention.prune(days=30) == 2
    assert AuditEntry.objects.filter(action="test.old").count() == 1
    assert "entries verified" in verify()


def test_pruning_twice_still_verifies():
    _aged(2, days_ago=200)
    retention.prune(days=150)
    _aged(1, days_ago=1)
    assert retention.prune(days=150) == 0
    assert "entries verified" in verify()
