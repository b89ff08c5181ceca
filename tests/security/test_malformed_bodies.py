"""A write whose body cannot be read is refused, never applied as an empty update."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.security.world import World

pytestmark = pytest.mark.django_db


def _client() -> tuple[APIClient, World]:
    world = World()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.home.management_key}")
    return client, world


def test_a_multipart_body_without_a_part_is_a_400():
    client, _ = _client()
    boundary = "7c5156fb04a2177cf9e322ad31ebde44"
    body = f"--{boundary}\r\nNone--{boundary}--\r\n"
    answer = client.generic(
        "PATCH", "/api/v1/tenant", body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert answer.status_code == 400, answer.content
    assert "multipart" in answer.json()["detail"]


def test_a_well_formed_multipart_patch_still_applies():
    client, world = _client()
    answer = client.patch("/api/v1/tenant", {"name": "Renamed Harbour"}, format="multipart")
    assert answer.status_code == 200, answer.content
    world.home.tenant.refresh_from_db()
    assert world.home.tenant.name == "Renamed Harbour"
