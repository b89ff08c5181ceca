"""Console: the API keys page."""

from __future__ import annotations

import pytest

from berth.redis import names
from tenants import keys
from tenants.constants import Role
from tenants.models import ApiKey
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db(transaction=True)


def test_creating_a_key_shows_it_once(client, redis_client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.MEMBER))
    response = client.post("/keys/", {"name": "laptop", "allowed_models": "tiny, other", "nonce": "n1"})
    body = response.content.decode()
    api_key = ApiKey.objects.get(tenant=tenant)
    plaintext = next(word for word in body.split('"') if word.startswith("sk-berth-") and "_" in word)
    assert api_key.display_prefix in plaintext
    assert response["Cache-Control"] == "no-store"
    assert api_key.allowed_models == ["tiny", "other"]
    assert redis_client.exists(names().api_key(api_key.lookup_id))
    again = client.get("/keys/").content.decode()
    assert api_key.display_prefix in again
    assert plaintext.split("_", 1)[1] not in again


def test_form_errors_are_shown_next_to_the_field(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    body = client.post("/keys/", {"name": "", "expires_at": "2001-01-01T00:00"}).content.decode()
    assert "This field is required" in body
    assert "must be in the future" in body
    assert ApiKey.objects.count() == 0


def test_revoking_from_the_console(client, redis_client):
    tenant = TenantFactory()
    user = member(tenant, Role.MEMBER)
    created = keys.create_api_key(tenant=tenant, name="k", created_by=user)
    client.force_login(user)
    response = client.post(f"/keys/{created.api_key.pk}/revoke/")
    assert response.status_code == 302
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is not None
    assert not redis_client.exists(names().api_key(created.api_key.lookup_id))


def test_another_tenants_key_cannot_be_revoked_from_the_console(client):
    other = keys.create_api_key(tenant=TenantFactory(), name="theirs").api_key
    client.force_login(member(TenantFactory(), Role.OWNER))
    assert client.post(f"/keys/{other.pk}/revoke/").status_code == 404
    other.refresh_from_db()
    assert other.revoked_at is None


def test_the_page_lists_only_the_tenants_keys(client):
    keys.create_api_key(tenant=TenantFactory(), name="not-mine-xyz")
    tenant = TenantFactory()
    keys.create_api_key(tenant=tenant, name="mine-abc")
    client.force_login(member(tenant, Role.MEMBER))
    body = client.get("/keys/").content.decode()
    assert "mine-abc" in body and "not-mine-xyz" not in body


def test_a_billing_member_is_told_they_cannot_use_keys(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.BILLING))
    response = client.get("/keys/")
    assert response.status_code == 403


def test_anonymous_users_are_sent_to_login(client):
    response = client.get("/keys/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_user_in_two_organizations_switches_between_them(client):
    first, second = TenantFactory(name="First Org"), TenantFactory(name="Second Org")
    user = member(first, Role.MEMBER)
    from tenants import accounts

    accounts.add_member(tenant=second, user=user, role=Role.MEMBER)
    keys.create_api_key(tenant=second, name="second-only-key")
    client.force_login(user)
    assert "second-only-key" not in client.get("/keys/").content.decode()
    assert client.post("/switch/", {"tenant": str(second.pk)}).status_code == 302
    assert "second-only-key" in client.get("/keys/").content.decode()
    stranger = TenantFactory()
    assert client.post("/switch/", {"tenant": str(stranger.pk)}).status_code == 404
    assert client.post("/switch/", {"tenant": "not-a-uuid"}).status_code == 404


def test_resubmitting_the_same_form_does_not_create_a_second_key(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.MEMBER))
    page = client.get("/keys/").content.decode()
    nonce = page.split('name="nonce" value="', 1)[1].split('"', 1)[0]
    first = client.post("/keys/", {"name": "once", "nonce": nonce})
    assert first.status_code == 200 and "sk-berth-" in first.content.decode()
    again = client.post("/keys/", {"name": "once", "nonce": nonce})
    assert again.status_code == 302
    assert ApiKey.objects.filter(tenant=tenant).count() == 1
