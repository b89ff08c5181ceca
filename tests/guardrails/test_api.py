"""``/api/v1/guardrails`` and ``/api/v1/content-governance``: isolation, roles, validation, mirror."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from berth.redis import names
from guardrails import mirror, policies
from guardrails.models import GuardrailPolicy
from tenants import keys
from tenants.constants import Role
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    a, b = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    owner, plain, outsider = member(a, Role.OWNER), member(a, Role.MEMBER), member(b, Role.OWNER)
    return {
        "a": a,
        "b": b,
        "owner": owner,
        "member": plain,
        "outsider": outsider,
        "b_key": keys.create_api_key(tenant=b, name="b", created_by=outsider).api_key,
        "a_key": keys.create_api_key(tenant=a, name="a", created_by=owner).api_key,
    }


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _mirrored(redis_client, tenant) -> dict:
    raw = redis_client.hgetall(names().guardrails(tenant.pk))
    return {"policies": json.loads(raw["policies"]), "log_content": raw["log_content"]} if raw else {}


def test_an_owner_creates_a_policy_and_it_is_mirrored(
    world, redis_client, django_capture_on_commit_callbacks
):
    client = client_for(world["owner"])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/guardrails/",
            {
                "name": "no PII",
                "detectors": {"email": "redact", "card": "block"},
                "blocked_terms": ["Falcon"],
                "api_key": str(world["a_key"].pk),
            },
            format="json",
        )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["detectors"] == {"email": "redact", "card": "block"}
    [entry] = _mirrored(redis_client, world["a"])["policies"]
    assert entry["id"] == body["id"] and entry["key_id"] == str(world["a_key"].pk)
    assert entry["detectors"]["card"] == "block" and entry["blocked_terms"] == ["Falcon"]
    assert _mirrored(redis_client, world["b"]) == {}


def test_other_tenants_get_404_and_members_only_read(world, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        theirs = policies.create_policy(tenant=world["b"], name="theirs", detectors={"email": "flag"})
        ours = policies.create_policy(tenant=world["a"], name="ours", detectors={"email": "flag"})
    owner = client_for(world["owner"])
    assert owner.get(f"/api/v1/guardrails/{theirs.pk}/").status_code == 404
    assert owner.patch(f"/api/v1/guardrails/{theirs.pk}/", {"name": "x"}, format="json").status_code == 404
    assert owner.delete(f"/api/v1/guardrails/{theirs.pk}/").status_code == 404
    assert [p["name"] for p in owner.get("/api/v1/guardrails/").json()["results"]] == ["ours"]
    plain = client_for(world["member"])
    assert plain.get(f"/api/v1/guardrails/{ours.pk}/").status_code == 200
    assert plain.patch(f"/api/v1/guardrails/{ours.pk}/", {"name": "x"}, format="json").status_code == 403
    assert plain.put("/api/v1/content-governance", {"log_content": True}, format="json").status_code == 403


def test_bad_input_is_a_drf_400(world):
    client = client_for(world["owner"])
    cases = [
        {"name": "x", "detectors": {"dna": "redact"}},
        {"name": "x", "detectors": {"email": "explode"}},
        {"name": "x", "api_key": str(world["b_key"].pk)},  # another tenant's key
        {"name": "x", "applies_to_prompts": False, "applies_to_completions": False},
        {"name": "x", "screen_model": "embedder"},  # no examples
        {"name": "x", "screen_threshold": 3},
        {"name": "x", "blocked_terms": "falcon"},
    ]
    for data in cases:
        response = client.post("/api/v1/guardrails/", data, format="json")
        assert response.status_code == 400, (data, response.content)
        assert isinstance(response.json(), dict)
    assert not GuardrailPolicy.objects.exists()


def test_changes_and_deletes_reach_the_mirror(world, redis_client, django_capture_on_commit_callbacks):
    client = client_for(world["owner"])
    with django_capture_on_commit_callbacks(execute=True):
        pk = client.post(
            "/api/v1/guardrails/", {"name": "p", "detectors": {"email": "flag"}}, format="json"
        ).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        client.patch(f"/api/v1/guardrails/{pk}/", {"detectors": {"email": "block"}}, format="json")
    assert _mirrored(redis_client, world["a"])["policies"][0]["detectors"] == {"email": "block"}
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(f"/api/v1/guardrails/{pk}/").status_code == 204
    assert _mirrored(redis_client, world["a"]) == {}


def test_deleting_the_key_removes_its_policy_from_the_mirror(
    world, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        policies.create_policy(
            tenant=world["a"], name="k", api_key=world["a_key"], detectors={"email": "flag"}
        )
    assert _mirrored(redis_client, world["a"])["policies"]
    with django_capture_on_commit_callbacks(execute=True):
        world["a_key"].delete()
    assert _mirrored(redis_client, world["a"]) == {}


def test_content_governance(world, redis_client, django_capture_on_commit_callbacks):
    client = client_for(world["owner"])
    assert client.get("/api/v1/content-governance").json()["log_content"] is False  # off by default
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch("/api/v1/content-governance", {"log_content": True}, format="json")
    assert response.status_code == 200 and response.json()["content_retention_days"] == 30
    assert _mirrored(redis_client, world["a"])["log_content"] == "1"
    assert (
        client.patch("/api/v1/content-governance", {"content_retention_days": 0}, format="json").status_code
        == 400
    )
    assert client_for(world["outsider"]).get("/api/v1/content-governance").json()["log_content"] is False


def test_platform_defaults_apply_to_tenants_without_their_own(
    world, redis_client, django_capture_on_commit_callbacks
):
    policies.create_policy(tenant=None, name="default", detectors={"secret": "redact"})
    policies.create_policy(tenant=world["a"], name="own", detectors={"email": "flag"})
    result = mirror.resync()
    assert result["written"] >= 2
    assert [p["name"] for p in _mirrored(redis_client, world["a"])["policies"]] == ["own"]
    assert [p["name"] for p in _mirrored(redis_client, world["b"])["policies"]] == ["default"]
    # A stale hash of a tenant that no longer exists goes.
    redis_client.hset(names().guardrails("00000000-0000-0000-0000-000000000000"), "policies", "[]")
    assert mirror.resync()["removed"] == 1


def test_rebuilding_the_mirror_restores_guardrails_after_redis_lost_them(world, redis_client):
    import io

    from django.core.management import call_command

    policies.create_policy(tenant=world["a"], name="pii", detectors={"email": "redact"})
    redis_client.flushdb()
    out = io.StringIO()
    call_command("rebuild_key_mirror", stdout=out)
    assert "Mirrored the guardrails of 1 tenant(s)" in out.getvalue()
    assert _mirrored(redis_client, world["a"])["policies"][0]["name"] == "pii"
