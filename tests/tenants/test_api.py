"""Management API: tenant isolation (404 for other tenants' objects), roles, one-time secrets."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.utils import timezone
from rest_framework.test import APIClient

from tenants import keys
from tenants.constants import KeyKind, Role
from tenants.models import ApiKey, Invitation, Membership
from tests.factories import TenantFactory, UserFactory, member

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    """Three actors: an owner and a member of tenant A, and an outsider who owns tenant B."""
    a, b = TenantFactory(name="Alpha"), TenantFactory(name="Beta")
    owner = member(a, Role.OWNER)
    plain = member(a, Role.MEMBER)
    outsider = member(b, Role.OWNER)
    b_key = keys.create_api_key(tenant=b, name="b-secret", created_by=outsider).api_key
    a_key = keys.create_api_key(tenant=a, name="a-key", created_by=owner).api_key
    return {
        "a": a,
        "b": b,
        "owner": owner,
        "member": plain,
        "outsider": outsider,
        "a_key": a_key,
        "b_key": b_key,
    }


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_it_requires_authentication():
    response = APIClient().get("/api/v1/keys/")
    assert response.status_code in (401, 403)
    assert "detail" in response.json()


def test_it_shows_the_current_tenant(world):
    body = client_for(world["owner"]).get("/api/v1/tenant/").json()
    assert body["id"] == str(world["a"].pk)
    assert body["role"] == "owner"
    assert body["plan"]["slug"] == "free"


def test_it_lists_only_the_tenants_own_keys(world):
    names = [k["name"] for k in client_for(world["owner"]).get("/api/v1/keys/").json()["results"]]
    assert names == ["a-key"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("delete", ""), ("post", "revoke/")],
    ids=["retrieve", "delete", "revoke"],
)
def test_another_tenants_key_is_a_404(world, method, suffix):
    response = getattr(client_for(world["owner"]), method)(f"/api/v1/keys/{world['b_key'].pk}/{suffix}")
    assert response.status_code == 404
    assert "b-secret" not in response.content.decode()
    world["b_key"].refresh_from_db()
    assert world["b_key"].revoked_at is None


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_another_tenants_member_is_a_404(world, method):
    b_membership = Membership.objects.get(tenant=world["b"], user=world["outsider"])
    response = getattr(client_for(world["owner"]), method)(
        f"/api/v1/members/{b_membership.pk}/", {"role": "member"}, format="json"
    )
    assert response.status_code == 404
    assert Membership.objects.filter(pk=b_membership.pk, role=Role.OWNER).exists()


def test_members_list_is_scoped(world):
    emails = {m["email"] for m in client_for(world["owner"]).get("/api/v1/members/").json()["results"]}
    assert emails == {world["owner"].email, world["member"].email}


def test_create_returns_the_secret_once_and_never_again(world, redis_client):
    client = client_for(world["member"])
    response = client.post("/api/v1/keys/", {"name": "ci", "allowed_models": ["tiny"]}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["key"].startswith("sk-berth-") and body["prefix"] in body["key"]
    secret = body["key"].split("_", 1)[1]
    listing = client.get("/api/v1/keys/").content.decode()
    detail = client.get(f"/api/v1/keys/{body['id']}/").content.decode()
    assert body["prefix"] in listing
    assert secret not in listing and secret not in detail
    assert "key" not in client.get(f"/api/v1/keys/{body['id']}/").json()


def test_create_validates_input_in_drf_shape(world):
    client = client_for(world["owner"])
    past = (timezone.now() - timedelta(days=1)).isoformat()
    response = client.post("/api/v1/keys/", {"name": "", "expires_at": past, "kind": "root"}, format="json")
    assert response.status_code == 400
    assert set(response.json()) >= {"name", "expires_at", "kind"}
    bad_json = client.post("/api/v1/keys/", "{not json", content_type="application/json")
    assert bad_json.status_code == 400 and "detail" in bad_json.json()
    assert ApiKey.objects.filter(tenant=world["a"]).count() == 1


def test_delete_revokes_and_keeps_the_key_listed(world):
    client = client_for(world["owner"])
    assert client.delete(f"/api/v1/keys/{world['a_key'].pk}/").status_code == 204
    body = client.get(f"/api/v1/keys/{world['a_key'].pk}/").json()
    assert body["status"] == "revoked" and body["revoked_at"]


def test_a_member_cannot_revoke_someone_elses_key(world):
    response = client_for(world["member"]).post(f"/api/v1/keys/{world['a_key'].pk}/revoke/")
    assert response.status_code == 403
    world["a_key"].refresh_from_db()
    assert world["a_key"].revoked_at is None


def test_a_member_can_revoke_their_own_key(world):
    own = keys.create_api_key(tenant=world["a"], name="mine", created_by=world["member"]).api_key
    response = client_for(world["member"]).post(f"/api/v1/keys/{own.pk}/revoke/")
    assert response.status_code == 200 and response.json()["status"] == "revoked"


def test_a_member_cannot_manage_members_or_settings(world):
    client = client_for(world["member"])
    owner_membership = Membership.objects.get(tenant=world["a"], user=world["owner"])
    assert client.patch(f"/api/v1/members/{owner_membership.pk}/", {"role": "member"}).status_code == 403
    assert client.patch("/api/v1/tenant/", {"name": "Hijacked"}).status_code == 403
    world["a"].refresh_from_db()
    assert world["a"].name == "Alpha"


def test_the_billing_role_cannot_use_keys(world):
    billing = member(world["a"], Role.BILLING)
    client = client_for(billing)
    assert client.get("/api/v1/keys/").status_code == 403
    assert client.post("/api/v1/keys/", {"name": "x"}, format="json").status_code == 403
    assert client.get("/api/v1/tenant/").status_code == 200


def invite_link() -> str:
    return re.search(r"https?://[^/]+(/invite/\S+/)", mail.outbox[-1].body).group(1)


def test_adding_a_member_invites_them_and_they_join_by_accepting(world, django_capture_on_commit_callbacks):
    admin = member(world["a"], Role.ADMIN)
    newcomer = member(TenantFactory(), Role.OWNER)
    client = client_for(admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/members/", {"email": newcomer.email.upper(), "role": "member"}, format="json"
        )
    assert response.status_code == 201
    assert response.json()["email"] == newcomer.email and response.json()["role"] == "member"
    # Not a member until they accept: an account is never added without its owner's consent.
    assert not Membership.objects.filter(tenant=world["a"], user=newcomer).exists()
    assert not newcomer.has_perm("tenants.use_api_keys", world["a"])
    assert mail.outbox[-1].to == [newcomer.email]
    accepting = APIClient()
    accepting.force_login(newcomer)
    assert accepting.post(invite_link()).status_code == 302
    joined = Membership.objects.get(tenant=world["a"], user=newcomer)
    patched = client.patch(f"/api/v1/members/{joined.pk}/", {"role": "billing"}, format="json")
    assert patched.status_code == 200 and patched.json()["role"] == "billing"
    newcomer = type(newcomer).objects.get(pk=newcomer.pk)  # fresh permission cache
    assert not newcomer.has_perm("tenants.use_api_keys", world["a"])
    assert newcomer.has_perm("tenants.view_billing", world["a"])


def test_an_unverified_account_cannot_join_through_an_invitation(world, django_capture_on_commit_callbacks):
    squatter = UserFactory(email="victim@x.test", email_verified=False)
    with django_capture_on_commit_callbacks(execute=True):
        client_for(world["owner"]).post("/api/v1/members/", {"email": "victim@x.test"}, format="json")
    squatting = APIClient()
    squatting.force_login(squatter)
    refused = squatting.post(invite_link(), follow=True)
    assert "Verify your email address first" in refused.content.decode()
    assert not Membership.objects.filter(tenant=world["a"], user=squatter).exists()


def test_known_and_unknown_addresses_get_the_same_answer(world):
    client = client_for(world["owner"])
    known = client.post("/api/v1/members/", {"email": world["outsider"].email}, format="json")
    unknown = client.post("/api/v1/members/", {"email": "nobody@x.test"}, format="json")
    assert known.status_code == unknown.status_code == 201
    assert set(known.json()) == set(unknown.json())
    assert {known.json()["email"], unknown.json()["email"]} == {world["outsider"].email, "nobody@x.test"}


def test_an_existing_member_is_a_field_error(world):
    response = client_for(world["owner"]).post(
        "/api/v1/members/", {"email": world["member"].email}, format="json"
    )
    assert response.status_code == 400 and "email" in response.json()


def test_an_unverified_account_cannot_create_keys_or_invite(world):
    unverified = member(world["a"], Role.ADMIN, email_verified=False)
    client = client_for(unverified)
    refused = client.post("/api/v1/keys/", {"name": "k"}, format="json")
    assert refused.status_code == 403 and "Verify your email address" in refused.json()["detail"]
    assert client.post("/api/v1/members/", {"email": "x@x.test"}, format="json").status_code == 403
    assert client.post("/api/v1/invitations/", {"email": "x@x.test"}, format="json").status_code == 403
    assert not ApiKey.objects.filter(name="k").exists() and not Invitation.objects.exists()


def test_invitations_are_throttled_per_account_and_capped_per_tenant(world, settings):
    settings.INVITATIONS_PER_TENANT_PER_DAY = 3
    client = client_for(world["owner"])
    for n in range(3):
        path = "/api/v1/members/" if n % 2 else "/api/v1/invitations/"
        assert client.post(path, {"email": f"p{n}@x.test"}, format="json").status_code == 201
    capped = client.post("/api/v1/members/", {"email": "p9@x.test"}, format="json")
    assert capped.status_code == 429 and "24 hours" in capped.json()["detail"]
    assert 0 < int(capped["Retry-After"]) <= 86400
    # Another tenant has its own cap; a day later this one may invite again.
    assert (
        client_for(world["outsider"])
        .post("/api/v1/members/", {"email": "p9@x.test"}, format="json")
        .status_code
        == 201
    )
    with time_machine.travel(timezone.now() + timedelta(days=1, minutes=1)):
        assert client.post("/api/v1/members/", {"email": "p9@x.test"}, format="json").status_code == 201

    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "invitation": ("100/h", "2/h")}
    admin = client_for(member(world["b"], Role.ADMIN))
    for n in range(2):
        admin.post("/api/v1/invitations/", {"email": f"q{n}@x.test"}, format="json")
    throttled = admin.post("/api/v1/invitations/", {"email": "q9@x.test"}, format="json")
    assert throttled.status_code == 429 and "Too many attempts" in throttled.json()["detail"]
    assert "Retry-After" in throttled


def test_the_last_owner_cannot_be_removed_or_demoted(world):
    client = client_for(world["owner"])
    own = Membership.objects.get(tenant=world["a"], user=world["owner"])
    assert client.delete(f"/api/v1/members/{own.pk}/").status_code == 400
    assert client.patch(f"/api/v1/members/{own.pk}/", {"role": "admin"}, format="json").status_code == 400
    assert Membership.objects.filter(pk=own.pk, role=Role.OWNER).exists()


def test_removing_a_member_takes_their_permissions_away(world):
    m = Membership.objects.get(tenant=world["a"], user=world["member"])
    assert client_for(world["owner"]).delete(f"/api/v1/members/{m.pk}/").status_code == 204
    assert client_for(world["member"]).get("/api/v1/keys/").status_code == 403


def test_a_management_key_authenticates_scripts_within_its_tenant(world):
    created = keys.create_api_key(
        tenant=world["a"], name="script", created_by=world["owner"], kind=KeyKind.MANAGEMENT
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    assert client.get("/api/v1/tenant/").json()["id"] == str(world["a"].pk)
    assert client.get(f"/api/v1/keys/{world['b_key'].pk}/").status_code == 404
    made = client.post("/api/v1/keys/", {"name": "from-script"}, format="json")
    assert made.status_code == 201


def test_an_inference_key_cannot_call_the_management_api(world):
    created = keys.create_api_key(tenant=world["a"], name="inf", created_by=world["owner"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    response = client.get("/api/v1/tenant/")
    assert response.status_code == 401
    assert response.json()["detail"]


def test_a_management_key_stops_working_when_its_owner_leaves(world):
    created = keys.create_api_key(
        tenant=world["a"], name="s", created_by=world["member"], kind=KeyKind.MANAGEMENT
    )
    Membership.objects.filter(tenant=world["a"], user=world["member"]).delete()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.plaintext}")
    assert client.get("/api/v1/tenant/").status_code == 401


def test_the_openapi_schema_and_docs_are_served(world):
    client = client_for(world["owner"])
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    assert "/api/v1/keys/" in schema.json()["paths"] or "/api/v1/keys" in str(schema.json()["paths"])
    assert client.get("/api/docs/").status_code == 200


def test_a_malformed_id_is_a_404_not_a_500(world):
    client = client_for(world["owner"])
    assert client.get("/api/v1/keys/not-a-uuid/").status_code == 404
    assert client.delete("/api/v1/members/123/").status_code == 404
