"""Console: the Adapters page (list, add with errors by field, delete), for the tenant's own only."""

from __future__ import annotations

import pytest

from models_registry import adapters
from models_registry.constants import AdapterStatus
from models_registry.models import LoraAdapter
from tenants.constants import Role
from tests.factories import TenantFactory, member
from tests.registry.adapter_files import write_adapter
from tests.registry.factories import ModelFactory, priced_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(settings, tmp_path):
    root = tmp_path / "adapters"
    settings.ADAPTER_ALLOWED_SOURCES = [f"{root}/"]
    settings.ADAPTER_DIR = tmp_path / "fetched"
    priced_model("tiny-chat", "0.10", "0.40")
    ModelFactory(name="embedder", task="embedding")
    acme, globex = TenantFactory(slug="acme", name="Acme"), TenantFactory(slug="globex")
    folder = write_adapter(root / "support", rank=8)
    theirs = adapters.create_adapter(
        tenant=globex, name="globex-secret", base_model="tiny-chat", source=str(folder)
    )
    return {"acme": acme, "folder": folder, "theirs": theirs}


def test_an_owner_adds_an_adapter_and_sees_it_listed_with_its_price(client, world):
    client.force_login(member(world["acme"], Role.OWNER))
    page = client.get("/adapters/").content.decode()
    assert '<option value="tiny-chat">' in page
    assert '<option value="embedder">' not in page  # embeddings cannot take an adapter
    assert "globex-secret" not in page
    response = client.post(
        "/adapters/", {"name": "support-v2", "base_model": "tiny-chat", "source": str(world["folder"])}
    )
    assert response.status_code == 302
    page = client.get("/adapters/").content.decode()
    assert "acme/support-v2" in page
    assert "is ready to call" in page
    assert '<td class="num">$0.10</td><td class="num">$0.40</td>' in page
    assert "globex-secret" not in page


def test_errors_are_shown_next_to_the_fields(client, world):
    client.force_login(member(world["acme"], Role.OWNER))
    body = client.post(
        "/adapters/", {"name": "Bad Name", "base_model": "tiny-chat", "source": "/etc"}
    ).content.decode()
    assert "Lower-case letters" in body
    body = client.post(
        "/adapters/", {"name": "ok", "base_model": "tiny-chat", "source": "/etc"}
    ).content.decode()
    assert "not allowed on this server" in body
    assert not LoraAdapter.objects.filter(tenant=world["acme"]).exists()


def test_delete_removes_it_and_another_tenants_adapter_is_a_404(client, world):
    client.force_login(member(world["acme"], Role.ADMIN))
    mine = adapters.create_adapter(
        tenant=world["acme"], name="mine", base_model="tiny-chat", source=str(world["folder"])
    )
    assert client.post(f"/adapters/{world['theirs'].pk}/delete/").status_code == 404
    assert LoraAdapter.objects.get(pk=world["theirs"].pk).status == AdapterStatus.READY
    assert client.post(f"/adapters/{mine.pk}/delete/").status_code == 302
    assert LoraAdapter.objects.get(pk=mine.pk).status == AdapterStatus.DELETED
    page = client.get("/adapters/").content.decode()
    assert "Deleted acme/mine." in page
    assert "<code>acme/mine</code>" not in page


def test_members_see_the_list_but_cannot_add_or_delete(client, world):
    mine = adapters.create_adapter(
        tenant=world["acme"], name="mine", base_model="tiny-chat", source=str(world["folder"])
    )
    client.force_login(member(world["acme"], Role.MEMBER))
    page = client.get("/adapters/").content.decode()
    assert "<code>acme/mine</code>" in page
    assert "Add an adapter" not in page and "Delete" not in page
    assert (
        client.post(
            "/adapters/", {"name": "x", "base_model": "tiny-chat", "source": str(world["folder"])}
        ).status_code
        == 403
    )
    assert client.post(f"/adapters/{mine.pk}/delete/").status_code == 403
