"""An /api URL that matches no route answers DRF's JSON 404, not Django's HTML page."""

from __future__ import annotations

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


@override_settings(DEBUG=False)
def test_an_unmatched_api_path_is_a_json_404(client):
    answer = client.put("/api/v1/guardrails/redis.log/", data="{}", content_type="application/json")
    assert answer.status_code == 404
    assert answer["Content-Type"] == "application/json"
    assert answer.json() == {"detail": "Not found."}


@override_settings(DEBUG=False)
def test_an_unmatched_console_path_is_still_a_page(client):
    answer = client.get("/no-such-page/")
    assert answer.status_code == 404
    assert answer["Content-Type"].startswith("text/html")
