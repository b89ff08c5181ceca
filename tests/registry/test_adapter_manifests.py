"""Adapters get manifests: recorded when they become ready, published, shown, never another tenant's."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEntry
from berth.redis import names
from integrity import Manifest, manifest_for_folder, verify_folder
from models_registry import adapters
from models_registry.constants import AdapterStatus
from models_registry.tasks import pull_adapter
from tenants.constants import Role
from tests.factories import TenantFactory, member
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import priced_model
from tests.registry.fake_hub import FakeHub

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(settings, tmp_path):
    root = tmp_path / "adapters"
    hub = FakeHub().start()
    settings.HF_ENDPOINT = hub.url
    settings.HF_ETAG_TIMEOUT = 5
    settings.ADAPTER_ALLOWED_SOURCES = ["hub:", f"{root}/"]
    settings.ADAPTER_DIR = tmp_path / "fetched"
    priced_model("tiny-chat", "0.10", "0.40", source_kind="hf", source="tiny/tiny-chat")
    yield {
        "root": root,
        "hub": hub,
        "acme": TenantFactory(slug="acme", name="Acme"),
        "globex": TenantFactory(slug="globex"),
    }
    hub.stop()


def test_a_folder_adapter_records_its_manifest_and_publishes_it(
    world, redis_client, django_capture_on_commit_callbacks
):
    folder = write_adapter(world["root"] / "support", rank=8, weight_bytes=3000)
    with django_capture_on_commit_callbacks(execute=True):
        adapter = adapters.create_adapter(
            tenant=world["acme"], name="support-v2", base_model="tiny-chat", source=str(folder)
        )
    expected = manifest_for_folder(folder, source=str(folder))
    assert adapter.status == AdapterStatus.READY
    assert adapter.manifest_digest == expected.digest
    assert sorted(f["path"] for f in adapter.manifest_files) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    entry = redis_client.hgetall(names().model("acme/support-v2"))
    assert entry["manifest_digest"] == expected.digest
    published = Manifest.from_json(entry["adapter_manifest"])
    assert published.digest == expected.digest  # what an engine checks is what was recorded
    assert verify_folder(folder, published) == []
    (folder / "adapter_model.safetensors").write_bytes(b"\1" * 3000)
    assert [str(m).split(" ")[0] for m in verify_folder(folder, published)] == ["adapter_model.safetensors"]
    created = AuditEntry.objects.get(action="adapter.created")
    assert created.after["manifest_digest"] == expected.digest


def test_a_hub_adapter_records_the_commit_it_fetched(world, redis_client, django_capture_on_commit_callbacks):
    hub = world["hub"]
    config = json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": "tiny/tiny-chat"}).encode()
    hub.add(
        "acme-ml/support-lora", {"adapter_config.json": config, "adapter_model.safetensors": b"\2" * 4000}
    )
    adapter = adapters.create_adapter(
        tenant=world["acme"], name="support-v2", base_model="tiny-chat", source="acme-ml/support-lora"
    )
    assert adapter.manifest_digest == ""  # pending: nothing fetched, nothing recorded
    with django_capture_on_commit_callbacks(execute=True):
        assert pull_adapter(str(adapter.pk)) == AdapterStatus.READY
    adapter.refresh_from_db()
    folder = adapters.fetched_folder(adapter)
    expected = manifest_for_folder(
        folder, source="acme-ml/support-lora", revision=hub.sha("acme-ml/support-lora")
    )
    assert adapter.manifest_revision == hub.sha("acme-ml/support-lora")
    assert adapter.manifest_digest == expected.digest
    assert {f["path"] for f in adapter.manifest_files} == {"adapter_config.json", "adapter_model.safetensors"}
    entry = redis_client.hgetall(names().model("acme/support-v2"))
    assert entry["manifest_digest"] == expected.digest
    assert json.loads(entry["adapter_manifest"])["revision"] == hub.sha("acme-ml/support-lora")
    recorded = AuditEntry.objects.get(action="adapter.manifest_recorded")
    assert (recorded.actor_kind, recorded.tenant_id, recorded.target_id) == (
        "system",
        world["acme"].pk,
        str(adapter.pk),
    )
    assert recorded.after["manifest_digest"] == expected.digest


def test_the_api_and_the_console_show_the_digest_to_its_tenant_only(world):
    folder = write_adapter(world["root"] / "support")
    adapter = adapters.create_adapter(
        tenant=world["acme"], name="support-v2", base_model="tiny-chat", source=str(folder)
    )
    api = APIClient()
    api.force_login(member(world["acme"], Role.MEMBER))
    assert api.get("/api/v1/adapters/support-v2").json()["manifest_digest"] == adapter.manifest_digest
    console = Client()
    console.force_login(member(world["acme"], Role.MEMBER))
    assert adapter.manifest_digest in console.get("/adapters/").content.decode()

    other = APIClient()
    other.force_login(member(world["globex"], Role.OWNER))
    assert other.get("/api/v1/adapters/support-v2").status_code == 404
    outsider = Client()
    outsider.force_login(member(world["globex"], Role.OWNER))
    assert adapter.manifest_digest not in outsider.get("/adapters/").content.decode()


def test_a_read_only_manifest_field_is_not_taken_from_the_client(world):
    folder = write_adapter(world["root"] / "support")
    api = APIClient()
    api.force_login(member(world["acme"], Role.OWNER))
    response = api.post(
        "/api/v1/adapters",
        {
            "name": "support-v2",
            "base_model": "tiny-chat",
            "source": str(folder),
            "manifest_digest": "sha256:0",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["manifest_digest"] == manifest_for_folder(folder, source=str(folder)).digest


def test_record_manifest_accepts_an_adapters_files_as_they_are_now(
    world, redis_client, django_capture_on_commit_callbacks, capsys
):
    folder = write_adapter(world["root"] / "support")
    adapter = adapters.create_adapter(
        tenant=world["acme"], name="support-v2", base_model="tiny-chat", source=str(folder)
    )
    first = adapter.manifest_digest
    (folder / "adapter_model.safetensors").write_bytes(b"\3" * 4096)  # the operator retrained it
    with django_capture_on_commit_callbacks(execute=True):
        call_command("record_manifest", "acme/support-v2", "--adapter")
    adapter.refresh_from_db()
    assert adapter.manifest_digest == manifest_for_folder(folder, source=str(folder)).digest != first
    assert adapter.manifest_digest in capsys.readouterr().out
    assert redis_client.hget(names().model("acme/support-v2"), "manifest_digest") == adapter.manifest_digest
    entry = AuditEntry.objects.filter(action="adapter.manifest_recorded").get()
    assert (entry.before, entry.after["manifest_digest"]) == (
        {"manifest_digest": first},
        adapter.manifest_digest,
    )
    assert (entry.tenant_id, entry.actor_label) == (world["acme"].pk, "manage.py record_manifest")
    with pytest.raises(CommandError, match="no ready adapter named 'globex/support-v2'"):
        call_command("record_manifest", "globex/support-v2", "--adapter")
