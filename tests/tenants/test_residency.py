"""A tenant's data-residency requirement: owners set it in the console and the API, among the
labels the operator gave nodes; admins, members and other tenants cannot."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from provisioning import dispatch
from tenants.constants import Role
from tests.factories import TenantFactory, member
from tests.registry.factories import NodeFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(monkeypatch):
    asked = []
    monkeypatch.setattr(dispatch, "reconcile_soon", lambda: asked.append("reconcile"))
    NodeFactory(name="eu-a", residency="eu")
    NodeFactory(name="us-a", residency="us")
    NodeFactory(name="plain")
    a, b = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    return {
        "a": a,
        "b": b,
        "owner": member(a, Role.OWNER),
        "admin": member(a, Role.ADMIN),
        "outsider": member(b, Role.OWNER),
        "reconciles": asked,
    }


def console(client, user, tenant):
    client.force_login(user)
    client.post("/switch/", {"tenant": str(tenant.pk)})
    return client


def test_an_owner_chooses_among_the_nodes_labels_in_the_console(
    client, world, django_capture_on_commit_callbacks
):
    console(client, world["owner"], world["a"])
    html = client.get("/settings/").content.decode()
    assert "Data residency" in html
    assert '<option value="eu"' in html and '<option value="us"' in html
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/settings/", {"form": "residency", "residency-data_residency": "eu"})
    assert response.status_code == 302
    world["a"].refresh_from_db()
    assert world["a"].data_residency == "eu"
    assert world["reconciles"] == ["reconcile"]  # running replicas move at once, not at the next pass
    world["b"].refresh_from_db()
    assert world["b"].data_residency == ""


def test_an_unknown_label_is_a_form_error(client, world):
    console(client, world["owner"], world["a"])
    response = client.post("/settings/", {"form": "residency", "residency-data_residency": "mars"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()


def test_admins_see_the_requirement_but_cannot_change_it(client, world):
    world["a"].data_residency = "us"
    world["a"].save()
    console(client, world["admin"], world["a"])
    html = client.get("/settings/").content.decode()
    assert "only on nodes in <strong>us</strong>" in html and "only owners can change it" in html
    assert client.post("/settings/", {"form": "residency", "residency-data_residency": ""}).status_code == 403
    world["a"].refresh_from_db()
    assert world["a"].data_residency == "us"


def api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_the_api_shows_and_sets_it_for_owners_only(world):
    owner = api(world["owner"])
    assert owner.get("/api/v1/tenant/").json()["data_residency"] == ""
    response = owner.patch("/api/v1/tenant/", {"data_residency": "eu"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["data_residency"] == "eu"
    bad = owner.patch("/api/v1/tenant/", {"data_residency": "mars"}, format="json")
    assert bad.status_code == 400
    assert "No node has the residency label 'mars'" in bad.json()["data_residency"][0]
    refused = api(world["admin"]).patch("/api/v1/tenant/", {"data_residency": ""}, format="json")
    assert refused.status_code == 403
    # The admin may still rename (the same endpoint, another field).
    assert api(world["admin"]).patch("/api/v1/tenant/", {"name": "Alpha 2"}, format="json").status_code == 200
    world["a"].refresh_from_db()
    assert (world["a"].data_residency, world["a"].name) == ("eu", "Alpha 2")
    # Another tenant's owner changes only their own.
    assert api(world["outsider"]).get("/api/v1/tenant/").json()["data_residency"] == ""
