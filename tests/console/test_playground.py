"""Console: the playground page and its short-lived session key."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.contrib.sessions.models import Session
from django.utils import timezone

from berth.redis import names
from console.playground import SESSION_KEY
from models_registry.constants import Task
from tenants import accounts, keys
from tenants.constants import KeyKind, Role
from tenants.middleware import SESSION_KEY as TENANT_SESSION_KEY
from tenants.models import ApiKey
from tests.factories import TenantFactory, member
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_playground_lists_chat_models_only(client, settings):
    settings.GATEWAY_PUBLIC_URL = "http://gw.test:8001/v1"
    ModelFactory(name="a-chat", task=Task.CHAT)
    ModelFactory(name="an-embedder", task=Task.EMBEDDING)
    client.force_login(member(TenantFactory(), Role.MEMBER))
    body = client.get("/playground/").content.decode()
    assert '<option value="a-chat">' in body and "an-embedder" not in body
    assert 'data-gateway-url="http://gw.test:8001/v1"' in body
    assert "console/playground.js" in body
    assert ApiKey.objects.count() == 0  # no key until the browser asks for one


def test_playground_without_chat_models_says_what_to_do(client):
    client.force_login(member(TenantFactory(), Role.MEMBER))
    assert "No chat models are available" in client.get("/playground/").content.decode()


def test_playground_key_is_minted_once_per_session_and_tenant(client, redis_client, settings):
    settings.GATEWAY_PUBLIC_URL = "http://gw.test:8001/v1"
    tenant = TenantFactory()
    user = member(tenant, Role.MEMBER, email="ada@example.test")
    client.force_login(user)

    first = client.post("/playground/key/")
    assert first.status_code == 200 and first["Cache-Control"] == "no-store"
    data = first.json()
    assert data["gateway_url"] == "http://gw.test:8001/v1"
    assert data["key"].startswith("sk-berth-")
    api_key = ApiKey.objects.get()
    assert api_key.tenant_id == tenant.pk and api_key.created_by == user
    assert api_key.name == "Playground · ada@example.test"
    assert timedelta(minutes=59) < api_key.expires_at - timezone.now() <= timedelta(hours=1)
    assert datetime.fromisoformat(data["expires_at"]) == api_key.expires_at
    assert redis_client.exists(names().api_key(api_key.lookup_id))
    assert redis_client.ttl(names().api_key(api_key.lookup_id)) > 0

    assert client.post("/playground/key/").json()["key"] == data["key"]
    assert ApiKey.objects.count() == 1

    # Another tenant of the same user gets its own key, never this one.
    other = TenantFactory()
    accounts.add_member(tenant=other, user=user, role=Role.MEMBER)
    session = client.session
    session[TENANT_SESSION_KEY] = str(other.pk)
    session.save()
    other_key = client.post("/playground/key/").json()["key"]
    assert other_key != data["key"]
    assert ApiKey.objects.get(tenant=other).name == "Playground · ada@example.test"
    assert set(client.session[SESSION_KEY]) == {str(tenant.pk), str(other.pk)}


def test_playground_key_is_replaced_near_expiry_or_when_revoked(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.MEMBER))
    first = client.post("/playground/key/").json()["key"]
    session = client.session
    entry = session[SESSION_KEY][str(tenant.pk)]
    entry["expires_at"] = (timezone.now() + timedelta(minutes=2)).isoformat()
    session[SESSION_KEY] = {str(tenant.pk): entry}
    session.save()
    second = client.post("/playground/key/").json()["key"]
    assert second != first
    # The replaced key is revoked at once rather than left usable until it expires.
    first_key = ApiKey.objects.get(pk=entry["key_id"])
    assert first_key.revoked_at is not None
    assert ApiKey.objects.usable().count() == 1

    ApiKey.objects.filter(name__startswith="Playground").update(revoked_at=timezone.now())
    third = client.post("/playground/key/").json()["key"]
    assert third not in (first, second)
    assert ApiKey.objects.usable().count() == 1


def test_playground_needs_the_use_keys_permission(client):
    tenant = TenantFactory()
    ModelFactory(name="a-chat")
    client.force_login(member(tenant, Role.BILLING))
    assert client.get("/playground/").status_code == 403
    assert client.post("/playground/key/").status_code == 403
    assert client.get("/playground/key/").status_code == 405
    assert ApiKey.objects.count() == 0


def test_an_unverified_account_gets_no_playground_key(client):
    tenant = TenantFactory()
    ModelFactory(name="a-chat")
    user = member(tenant, Role.OWNER)
    user.email_verified = False
    user.save(update_fields=["email_verified"])
    client.force_login(user)
    page = client.get("/playground/")
    assert page.status_code == 403
    assert "verify" in page.content.decode().lower()
    assert client.post("/playground/key/").status_code == 403
    assert ApiKey.objects.count() == 0


def _stored_session_row(client) -> str:
    return Session.objects.get(session_key=client.session.session_key).session_data


def test_playground_key_never_sits_in_clear_in_the_session_table(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.MEMBER))
    key = client.post("/playground/key/").json()["key"]
    secret = key.split("_", 1)[1]
    row = _stored_session_row(client)
    decoded = Session.objects.get(session_key=client.session.session_key).get_decoded()
    assert secret not in row and secret not in json.dumps(decoded)
    assert "key" not in decoded[SESSION_KEY][str(tenant.pk)]
    # Derived again on the next call, and it is the key the control plane and gateway accept.
    assert client.post("/playground/key/").json()["key"] == key
    assert keys.authenticate_key(key, kind=KeyKind.INFERENCE).tenant_id == tenant.pk


def test_playground_key_is_replaced_when_it_can_no_longer_be_derived(client, settings):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.MEMBER))
    first = client.post("/playground/key/").json()["key"]
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]  # the session stays valid
    settings.SECRET_KEY = "rotated-" + settings.SECRET_KEY
    second = client.post("/playground/key/").json()["key"]
    assert second != first
    assert ApiKey.objects.usable().count() == 1
    assert keys.authenticate_key(second, kind=KeyKind.INFERENCE)


def test_a_clear_playground_key_left_in_a_session_is_revoked_and_dropped(client):
    tenant = TenantFactory()
    user = member(tenant, Role.MEMBER)
    client.force_login(user)
    old = keys.create_api_key(tenant=tenant, name="Playground", created_by=user)
    session = client.session
    session[SESSION_KEY] = {
        str(tenant.pk): {
            "key_id": str(old.api_key.pk),
            "key": old.plaintext,
            "expires_at": (timezone.now() + timedelta(minutes=30)).isoformat(),
        }
    }
    session.save()
    new = client.post("/playground/key/").json()["key"]
    assert new != old.plaintext
    assert ApiKey.objects.get(pk=old.api_key.pk).revoked_at is not None
    assert old.plaintext.split("_", 1)[1] not in _stored_session_row(client)
