"""The console's Guardrails page: members read, owners and admins change, other tenants get 404."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from berth.redis import names
from guardrails import policies
from guardrails.models import ContentGovernance, GuardrailPolicy
from tenants.constants import Role
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def world():
    a, b = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    return {
        "a": a,
        "b": b,
        "owner": member(a, Role.OWNER),
        "admin": member(a, Role.ADMIN),
        "member": member(a, Role.MEMBER),
        "outsider": member(b, Role.OWNER),
    }


POLICY_POST = {
    "form": "policy",
    "policy-name": "No PII",
    "policy-enabled": "on",
    "policy-applies_to_prompts": "on",
    "policy-blocked_terms": "Project Falcon\n\n  internal only  ",
    "policy-blocked_terms_action": "block",
    "policy-max_prompt_action": "block",
    "policy-screen_threshold": "0.8",
    "policy-screen_action": "block",
    "policy-screen_timeout_ms": "500",
    "policy-detector_email": "redact",
    "policy-detector_card": "block",
    "policy-detector_phone": "",
}


def test_the_page_is_in_the_nav_and_explains_the_actions(world):
    page = client_for(world["member"]).get("/guardrails/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'href="/guardrails/"' in html and "No policies" in html
    assert "New policy" not in html  # members read only


def test_an_admin_creates_a_policy_that_reaches_the_gateway_mirror(
    world, redis_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(world["admin"]).post("/guardrails/", POLICY_POST)
    assert response.status_code == 302
    policy = GuardrailPolicy.objects.get(tenant=world["a"])
    assert policy.detectors == {"email": "redact", "card": "block"}
    assert policy.blocked_terms == ["Project Falcon", "internal only"]
    mirrored = json.loads(redis_client.hget(names().guardrails(world["a"].pk), "policies"))
    assert mirrored[0]["detectors"] == {"email": "redact", "card": "block"}
    page = client_for(world["member"]).get("/guardrails/").content.decode()
    assert "No PII" in page and "email: redact" in page


def test_form_errors_are_shown_not_500(world):
    bad = {**POLICY_POST, "policy-applies_to_prompts": "", "policy-screen_model": "embedder"}
    response = client_for(world["owner"]).post("/guardrails/", bad)
    assert response.status_code == 400
    html = response.content.decode()
    assert "A policy applies to prompts, completions or both." in html
    assert "A screen needs at least one example phrase." in html
    assert not GuardrailPolicy.objects.exists()


def test_members_cannot_change_and_other_tenants_get_404(world, django_capture_on_commit_callbacks):
    policy = policies.create_policy(tenant=world["a"], name="ours", detectors={"email": "flag"})
    plain = client_for(world["member"])
    assert plain.post("/guardrails/", POLICY_POST).status_code == 403
    assert plain.get(f"/guardrails/{policy.pk}/").status_code == 200
    assert plain.post(f"/guardrails/{policy.pk}/", {**POLICY_POST, "policy-name": "x"}).status_code == 403
    assert plain.post(f"/guardrails/{policy.pk}/delete/").status_code == 403
    outsider = client_for(world["outsider"])
    assert outsider.get(f"/guardrails/{policy.pk}/").status_code == 404
    assert outsider.post(f"/guardrails/{policy.pk}/delete/").status_code == 404
    assert "ours" not in outsider.get("/guardrails/").content.decode()
    assert GuardrailPolicy.objects.filter(pk=policy.pk, name="ours").exists()


def test_an_owner_edits_and_deletes(world, django_capture_on_commit_callbacks):
    policy = policies.create_policy(tenant=world["a"], name="ours", detectors={"email": "flag"})
    owner = client_for(world["owner"])
    page = owner.get(f"/guardrails/{policy.pk}/").content.decode()
    assert 'value="ours"' in page
    response = owner.post(f"/guardrails/{policy.pk}/", {**POLICY_POST, "policy-name": "renamed"})
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.name == "renamed" and policy.detectors["card"] == "block"
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.post(f"/guardrails/{policy.pk}/delete/").status_code == 302
    assert not GuardrailPolicy.objects.exists()


def test_content_logging_is_off_until_an_owner_turns_it_on(
    world, redis_client, django_capture_on_commit_callbacks
):
    owner = client_for(world["owner"])
    assert "never logged" in owner.get("/guardrails/").content.decode()
    data = {"form": "content", "content-log_content": "on", "content-content_retention_days": "7"}
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.post("/guardrails/", data).status_code == 302
    assert ContentGovernance.objects.get(tenant=world["a"]).content_retention_days == 7
    assert redis_client.hget(names().guardrails(world["a"].pk), "log_content") == "1"
    bad = {**data, "content-content_retention_days": "0"}
    assert owner.post("/guardrails/", bad).status_code == 400
