"""The hash chain: appends link up, the trigger refuses edits, verify_audit_chain finds tampering."""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from audit import chain, trail
from audit.constants import GENESIS
from audit.models import AppendOnly, AuditEntry, ChainHead
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def _entries(n: int, tenant=None) -> list[AuditEntry]:
    return [
        trail.record(action="test.thing", tenant=tenant, summary=f"thing {i}", after={"i": i})
        for i in range(n)
    ]


def verify() -> str:
    out = StringIO()
    call_command("verify_audit_chain", stdout=out)
    return out.getvalue()


def raw(sql: str, params=()) -> None:
    """What someone with database access does by hand, past the trigger."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL berth.audit_prune = 'on'")
        cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER audit_entry_append_only")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER audit_entry_append_only")


def test_each_entry_links_to_the_one_before():
    first, second, third = _entries(3)
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash
    assert third.prev_hash == second.hash
    assert ChainHead.objects.get().last_hash == third.hash
    for entry in AuditEntry.objects.all():
        assert chain.digest(entry) == entry.hash  # what was hashed is what PostgreSQL gives back


def test_it_fills_the_target_and_keeps_secrets_out():
    tenant = TenantFactory()
    user = UserFactory()
    entry = trail.record(
        action="member.added",
        tenant=tenant,
        actor=user,
        target=user,
        before={"password": "hunter2", "role": None},
        after={"secret_hash": "abc", "role": "admin"},
    )
    entry.refresh_from_db()
    assert (entry.target_type, entry.target_id) == ("tenants.user", str(user.pk))
    assert entry.before == {"role": None} and entry.after == {"role": "admin"}
    assert (entry.actor_kind, entry.actor_label, entry.tenant_label) == ("user", user.email, tenant.slug)


def test_without_an_actor_or_request_it_is_the_system():
    entry = trail.record(action="invoice.finalized")
    assert (entry.actor_kind, entry.actor_id, entry.actor_label) == ("system", None, "system")


def test_the_orm_refuses_to_change_or_delete_an_entry():
    entry = _entries(1)[0]
    entry.summary = "rewritten"
    with pytest.raises(AppendOnly):
        entry.save()
    with pytest.raises(AppendOnly):
        entry.delete()
    with pytest.raises(AppendOnly):
        AuditEntry.objects.filter(pk=entry.pk).update(summary="x")
    with pytest.raises(AppendOnly):
        AuditEntry.objects.all().delete()


@pytest.mark.parametrize("sql", ["UPDATE audit_auditentry SET summary = 'x'", "DELETE FROM audit_auditentry"])
def test_the_database_refuses_raw_updates_and_deletes(sql):
    _entries(1)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql)


def test_verify_passes_on_a_clean_log():
    _entries(5)
    assert "5 entries verified" in verify()


def test_verify_passes_on_an_empty_log():
    assert "0 entries verified" in verify()


def test_verify_names_a_row_changed_by_hand():
    entries = _entries(5)
    raw("UPDATE audit_auditentry SET summary = 'nothing happened' WHERE seq = %s", [entries[2].seq])
    with pytest.raises(CommandError, match=rf"entry #{entries[2].seq}: its contents do not match"):
        verify()


def test_verify_names_the_entry_after_a_deleted_one():
    entries = _entries(5)
    raw("DELETE FROM audit_auditentry WHERE seq = %s", [entries[1].seq])
    with pytest.raises(CommandError, match=rf"entry #{entries[2].seq}: its prev_hash does not match"):
        verify()


def test_verify_notices_the_newest_entries_were_deleted():
    entries = _entries(3)
    raw("DELETE FROM audit_auditentry WHERE seq = %s", [entries[2].seq])
    with pytest.raises(CommandError, match="chain head: the newest entries were deleted"):
        verify()


def test_verify_exits_non_zero_from_the_command_line(tmp_path):
    entries = _entries(2)
    raw("UPDATE audit_auditentry SET after = '{\"i\": 7}' WHERE seq = %s", [entries[0].seq])
    with pytest.raises(CommandError) as caught:
        verify()
    assert caught.value.returncode == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_fork_the_chain():
    per_thread, threads = 5, 4
    errors: list[BaseException] = []

    def write():
        try:
            for i in range(per_thread):
                with transaction.atomic():
                    trail.record(action="test.concurrent", after={"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=write) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    rows = list(AuditEntry.objects.order_by("seq"))
    assert len(rows) == per_thread * threads
    assert len({row.prev_hash for row in rows}) == len(rows)  # no two entries share a predecessor
    assert "20 entries verified" in verify()
