"""/api/v1/adapters: the current tenant's adapters only; DRF-shaped errors; owners and admins write."""

from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from models_registry import adapters
from models_registry.constants import AdapterStatus
from models_registry.models import LoraAdapter
from tenants.constants import Role
from tests.factories import TenantFactory, member
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import priced_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(settings, tmp_path):
    root = tmp_path / "adapters"
    settings.ADAPTER_ALLOWED_SOURCES = ["hub:", f"{root}/"]
    settings.ADAPTER_DIR = tmp_path / "fetched"
    priced_model("tiny-chat", "0.10", "0.40")
    acme, globex = TenantFactory(slug="acme"), TenantFactory(slug="globex")
    folder = write_adapter(root / "support", rank=8)
    theirs = adapters.create_adapter(tenant=globex, name="secret", base_model="tiny-chat", source=str(folder))
    return {"acme": acme, "globex": globex, "folder": folder, "theirs": theirs}


def client_for(tenant, role=Role.OWNER):
    client = APIClient()
    client.force_login(member(tenant, role))
    return client


def test_an_owner_registers_lists_reads_and_deletes_an_adapter(world):
    client = client_for(world["acme"])
    response = client.post(
        "/api/v1/adapters",
        {"name": "support-v2", "base_model": "tiny-chat", "source": str(world["folder"])},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["model"], body["status"], body["rank"], body["visibility"]) == (
        "acme/support-v2",
        "ready",
        8,
        "private",
    )
    assert body["source_kind"] == "path"
    assert Decimal(body["price"]["input_per_million"]) == Decimal("0.10")
    assert [a["name"] for a in client.get("/api/v1/adapters/").json()["results"]] == ["support-v2"]
    assert client.get("/api/v1/adapters/support-v2").json()["base_model"] == "tiny-chat"
    assert client.delete("/api/v1/adapters/support-v2").status_code == 204
    assert client.get("/api/v1/adapters/support-v2").status_code == 404
    assert client.get("/api/v1/adapters").json()["results"] == []
    assert LoraAdapter.objects.get(served_name="acme/support-v2").status == AdapterStatus.DELETED


def test_another_tenants_adapter_is_a_404(world):
    client = client_for(world["acme"])
    assert client.get("/api/v1/adapters").json()["results"] == []
    assert client.get("/api/v1/adapters/secret").status_code == 404
    assert client.delete("/api/v1/adapters/secret").status_code == 404
    assert LoraAdapter.objects.get(pk=world["theirs"].pk).status == AdapterStatus.READY


def test_errors_are_drf_shaped_by_field(world):
    client = client_for(world["acme"])
    response = client.post(
        "/api/v1/adapters", {"name": "Bad Name", "base_model": "nope", "source": "/etc"}, format="json"
    )
    assert response.status_code == 400
    assert "name" in response.json()
    response = client.post(
        "/api/v1/adapters", {"name": "ok", "base_model": "nope", "source": "/etc"}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"base_model": ["There is no model named 'nope'."]}
    response = client.post(
        "/api/v1/adapters", {"name": "ok", "base_model": "tiny-chat", "source": "/etc"}, format="json"
    )
    assert response.status_code == 400
    assert "not allowed on this server" in response.json()["source"][0]
    assert client.post("/api/v1/adapters", {}, format="json").json().keys() >= {
        "name",
        "base_model",
        "source",
    }


def test_members_may_list_but_not_register_or_delete(world):
    owner_client = client_for(world["acme"])
    owner_client.post(
        "/api/v1/adapters",
        {"name": "support-v2", "base_model": "tiny-chat", "source": str(world["folder"])},
        format="json",
    )
    client = client_for(world["acme"], Role.MEMBER)
    assert [a["model"] for a in client.get("/api/v1/adapters").json()["results"]] == ["acme/support-v2"]
    response = client.post(
        "/api/v1/adapters",
        {"name": "x", "base_model": "tiny-chat", "source": str(world["folder"])},
        format="json",
    )
    assert response.status_code == 403
    assert client.delete("/api/v1/adapters/support-v2").status_code == 403


def test_a_hub_adapter_is_pending_until_the_task_fetches_it(
    world, django_capture_on_commit_callbacks, monkeypatch
):
    queued = []
    monkeypatch.setattr(adapters, "_enqueue_pull", queued.append)
    client = client_for(world["acme"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/adapters",
            {"name": "hub-one", "base_model": "tiny-chat", "source": "someone/lora", "revision": "v1"},
            format="json",
        )
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["source_kind"], body["revision"], body["rank"]) == (
        "pending",
        "hub",
        "v1",
        None,
    )
    assert [a.served_name for a in queued] == ["acme/hub-one"]
