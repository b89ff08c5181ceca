"""A filter given empty on /api/v1/audit is a 400 naming it, not a silent "no filter"."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests.security.world import World

pytestmark = pytest.mark.django_db


def test_blank_filters_are_refused_by_name():
    world = World()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.home.management_key}")
    answer = client.get("/api/v1/audit", {"actor_kind": "", "start": ""})
    assert answer.status_code == 400, answer.content
    assert set(answer.json()) == {"actor_kind", "start"}
    assert client.get("/api/v1/audit", {"actor_kind": "user"}).status_code == 200
