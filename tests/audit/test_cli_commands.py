"""The governance commands as an operator runs them in production: ``berth <command>`` from any
directory (the image puts ``berth`` on PATH; its entrypoint runs any other word as a program)."""

from __future__ import annotations

import pytest
from django.db import connection

from audit import trail
from audit.models import AuditEntry
from models_registry.models import ModelManifest
from tests.berth.test_cli import run_berth
from tests.factories import TenantFactory
from tests.registry.factories import ModelFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def database_env() -> dict[str, str]:
    db = connection.settings_dict
    auth = f"{db['USER']}:{db['PASSWORD']}@" if db.get("PASSWORD") else f"{db['USER']}@"
    return {"DATABASE_URL": f"postgresql://{auth}{db['HOST']}:{db['PORT']}/{db['NAME']}", "DEBUG": "1"}


def test_berth_verify_audit_chain_passes_a_clean_log_and_reports_a_changed_row(tmp_path):
    tenant = TenantFactory()
    for n in range(3):
        trail.record(action="tenant.settings_changed", tenant=tenant, summary=f"change {n}")
    env = database_env()
    clean = run_berth("verify_audit_chain", cwd=tmp_path, env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "audit chain intact" in clean.stdout

    middle = AuditEntry.objects.filter(summary="change 1").get()
    with connection.cursor() as cursor:  # an edit by hand by someone who owns the table
        cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER audit_entry_append_only")
        cursor.execute(
            "UPDATE audit_auditentry SET summary = 'nothing happened' WHERE seq = %s", [middle.seq]
        )
        cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER audit_entry_append_only")
    broken = run_berth("verify_audit_chain", cwd=tmp_path, env=env)
    assert broken.returncode == 1
    assert f"entry #{middle.seq}" in broken.stderr
    assert "the row was changed" in broken.stderr


def test_berth_record_manifest_records_and_audits_a_new_manifest(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\1" * 256)
    model = ModelFactory(name="cli-model", source=str(folder))
    first = ModelManifest.objects.current_for(model).digest
    (folder / "model.safetensors").write_bytes(b"\2" * 256)  # an operator replaced the weights
    result = run_berth("record_manifest", "cli-model", cwd=tmp_path, env=database_env())
    assert result.returncode == 0, result.stdout + result.stderr
    current = ModelManifest.objects.current_for(model).digest
    assert current != first and current in result.stdout
    entry = AuditEntry.objects.filter(action="model.manifest_recorded").order_by("-seq").first()
    assert entry.after["manifest_digest"] == current
    assert entry.actor_label == "manage.py record_manifest"
