"""Governance changes reach the audit trail: residency, manifests, verification failures, parsers."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

from audit.models import AuditEntry
from integrity import manifest_for_folder
from models_registry import catalog, manifests
from models_registry.constants import Engine
from provisioning import agent as agent_module
from provisioning import verification
from provisioning.constants import WorkerState
from provisioning.models import Node, Worker
from tenants import residency
from tenants.constants import Role
from tests.factories import TenantFactory, member
from tests.registry.factories import DeploymentFactory, ModelFactory, NodeFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "tiny"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\x07" * 1024)
    return path


def entries(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("seq"))


def test_a_residency_requirement_change_is_recorded_with_the_owner_as_actor():
    NodeFactory(name="eu-a", residency="eu")
    NodeFactory(name="us-a", residency="us")
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER, email_verified=True)
    client = Client()
    client.force_login(owner)
    residency.set_requirement(tenant=tenant, label="eu")
    residency.set_requirement(tenant=tenant, label="eu")  # unchanged: no entry
    residency.set_requirement(tenant=tenant, label="")
    got = entries("tenant.data_residency_changed")
    assert [(e.before, e.after) for e in got] == [
        ({"data_residency": ""}, {"data_residency": "eu"}),
        ({"data_residency": "eu"}, {"data_residency": ""}),
    ]
    assert all(e.tenant_id == tenant.pk and e.target_id == str(tenant.pk) for e in got)
    # The tenant's owner sees it on the console's audit page; another tenant does not.
    page = client.get("/audit/").content.decode()
    assert "tenant.data_residency_changed" in page
    other = Client()
    other.force_login(member(TenantFactory(), Role.OWNER, email_verified=True))
    assert "tenant.data_residency_changed" not in other.get("/audit/").content.decode()


def test_the_console_records_the_owner_who_changed_the_residency():
    NodeFactory(name="eu-b", residency="eu")
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER, email_verified=True)
    client = Client()
    client.force_login(owner)
    response = client.post("/settings/", {"form": "residency", "residency-data_residency": "eu"})
    assert response.status_code == 302
    (entry,) = entries("tenant.data_residency_changed")
    assert (entry.actor_kind, entry.actor_id, entry.tenant_id) == ("user", owner.pk, tenant.pk)
    assert entry.after == {"data_residency": "eu"}


def test_recording_a_manifest_is_recorded_once_per_new_digest(folder):
    model = ModelFactory(name="gov-local", source=str(folder))  # save_model records the first one
    first = manifest_for_folder(folder, source=str(folder))
    (folder / "model.safetensors").write_bytes(b"\x08" * 1024)
    manifests.record_folder(model=model, folder=folder)
    manifests.record_folder(model=model, folder=folder)  # same digest: no entry
    second = manifest_for_folder(folder, source=str(folder))
    got = entries("model.manifest_recorded")
    assert [(e.before["manifest_digest"], e.after["manifest_digest"]) for e in got][-2:] == [
        ("", first.digest),
        (first.digest, second.digest),
    ]
    assert got[-1].tenant_id is None
    assert (got[-1].target_type, got[-1].target_id) == ("models_registry.model", str(model.pk))
    assert got[-1].after["file_count"] == 2


def test_manage_py_record_manifest_is_recorded_as_the_command(folder, capsys):
    model = ModelFactory(name="gov-cmd", source=str(folder))
    (folder / "extra.json").write_text("{}")
    call_command("record_manifest", model.name)
    entry = entries("model.manifest_recorded")[-1]
    assert (entry.actor_kind, entry.actor_label) == ("system", "manage.py record_manifest")
    assert entry.after["file_count"] == 3


def test_a_verification_failure_is_a_system_entry_naming_the_files(folder, settings, tmp_path):
    settings.MODEL_DIGEST_CACHE = tmp_path / "digests.json"
    model = ModelFactory(name="gov-bad", source=str(folder))
    node = NodeFactory(name="gov-node")
    worker = Worker.objects.create(
        deployment=DeploymentFactory(model=model, engine=Engine.CPU),
        node=node,
        cpu_slot=0,
        state=WorkerState.STARTING,
        api_key="k",
    )
    (folder / "model.safetensors").write_bytes(b"\x09" * 1024)
    assert not verification.before_start(worker).ok
    (entry,) = entries("model.verification_failed")
    assert (entry.actor_kind, entry.tenant_id, entry.target_id) == ("system", None, str(model.pk))
    assert entry.after["files"] == ["model.safetensors"]
    assert (entry.after["worker"], entry.after["node"]) == (str(worker.pk), "gov-node")
    assert "model.safetensors does not match the manifest" in entry.summary
    assert Worker.objects.get(pk=worker.pk).state == WorkerState.FAILED


def test_an_untouched_model_leaves_no_failure_entry(folder, settings, tmp_path):
    settings.MODEL_DIGEST_CACHE = tmp_path / "digests.json"
    model = ModelFactory(name="gov-ok", source=str(folder))
    worker = Worker.objects.create(
        deployment=DeploymentFactory(model=model, engine=Engine.CPU),
        node=NodeFactory(),
        cpu_slot=0,
        state=WorkerState.STARTING,
        api_key="k",
    )
    assert verification.before_start(worker).ok
    assert entries("model.verification_failed") == []


def test_a_node_agent_residency_change_is_recorded(settings):
    NodeFactory(name="gov-agent", residency="")
    agent_module.Agent(name="gov-agent", address="127.0.0.1", cpu_slots=1, residency="eu").register()
    agent_module.Agent(name="gov-agent", address="127.0.0.1", cpu_slots=1, residency="eu").register()
    agent_module.Agent(name="gov-agent", address="127.0.0.1", cpu_slots=1).register()  # keeps it
    (entry,) = entries("node.residency_changed")
    node = Node.objects.get(name="gov-agent")
    assert node.residency == "eu"
    assert (entry.before, entry.after) == ({"residency": ""}, {"residency": "eu"})
    assert (entry.actor_kind, entry.target_id) == ("system", str(node.pk))
    assert "gov-agent" in entry.actor_label


@pytest.mark.parametrize("field", ["tool_call_parser", "reasoning_parser"])
def test_parser_changes_are_in_the_model_changed_diff(field):
    model = ModelFactory(name=f"gov-{field.split('_')[0]}", source="/nowhere/model")
    value = "hermes" if field == "tool_call_parser" else "deepseek_r1"
    setattr(model, field, value)
    catalog.save_model(model=model)
    entry = entries("model.changed")[-1]
    assert entry.before == {field: ""}
    assert entry.after == {field: value}


def test_the_chain_still_verifies_after_these_entries(folder, settings, tmp_path, capsys):
    settings.MODEL_DIGEST_CACHE = tmp_path / "digests.json"
    model = ModelFactory(name="gov-chain", source=str(folder))
    (folder / "model.safetensors").write_bytes(b"\x0a" * 1024)
    manifests.record_folder(model=model, folder=folder)
    assert AuditEntry.objects.filter(action="model.manifest_recorded").exists()
    call_command("verify_audit_chain")  # raises CommandError on a broken chain
    assert "audit chain intact" in capsys.readouterr().out
