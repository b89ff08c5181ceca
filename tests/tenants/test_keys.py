"""API keys: shape, hashing, verification, pepper rotation, one-time display."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from tenants import keys
from tenants.constants import KeyKind
from tenants.models import ApiKey
from tests.factories import TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

KEY_RE = re.compile(r"^sk-berth-[A-Za-z0-9]{12}_[A-Za-z0-9]{43}$")


def test_it_returns_a_high_entropy_key_with_visible_prefix():
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    assert KEY_RE.match(created.plaintext)
    assert created.plaintext.startswith(created.api_key.display_prefix + "_")


def test_it_stores_only_an_hmac_of_the_secret():
    created = keys.create_api_key(tenant=TenantFactory(), name="k")
    row = ApiKey.objects.get(pk=created.api_key.pk)
    secret = created.plaintext.split("_", 1)[1]
    values = [str(v) for v in ApiKey.objects.filter(pk=row.pk).values().first().values()]
    assert not any(secret in value for value in values)
    assert row.secret_hash == keys.hash_secret(secret, row.pepper_id)[1]
    assert len(row.secret_hash) == 64


def test_it_authenticates_the_right_key_and_rejects_wrong_secret_and_unknown_alike():
    created = keys.create_api_key(tenant=TenantFactory(), name="k", kind=KeyKind.MANAGEMENT)
    assert keys.authenticate_key(created.plaintext, kind=KeyKind.MANAGEMENT).pk == created.api_key.pk
    wrong_secret = created.plaintext[:-1] + ("A" if created.plaintext[-1] != "A" else "B")
    unknown = "mk-berth-" + "Z" * 12 + "_" + created.plaintext.split("_", 1)[1]
    errors = []
    for raw in (wrong_secret, unknown, "mk-berth-short", ""):
        with pytest.raises(keys.InvalidKey) as exc:
            keys.authenticate_key(raw, kind=KeyKind.MANAGEMENT)
        errors.append(exc.value)
    # Callers map every failure to the same response; the kind of failure is not revealed.
    assert all(isinstance(e, keys.InvalidKey) for e in errors)


def test_it_rejects_a_key_used_as_the_other_kind():
    created = keys.create_api_key(tenant=TenantFactory(), name="k", kind=KeyKind.INFERENCE)
    with pytest.raises(keys.InvalidKey):
        keys.authenticate_key(created.plaintext, kind=KeyKind.MANAGEMENT)


def test_it_rejects_revoked_and_expired_keys():
    tenant = TenantFactory()
    revoked = keys.create_api_key(tenant=tenant, name="r", kind=KeyKind.MANAGEMENT)
    keys.revoke_api_key(api_key=revoked.api_key)
    expiring = keys.create_api_key(
        tenant=tenant, name="e", kind=KeyKind.MANAGEMENT, expires_at=timezone.now() + timedelta(seconds=30)
    )
    ApiKey.objects.filter(pk=expiring.api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    for created in (revoked, expiring):
        with pytest.raises(keys.InvalidKey):
            keys.authenticate_key(created.plaintext, kind=KeyKind.MANAGEMENT)


def test_it_still_verifies_keys_made_with_a_rotated_out_pepper(settings):
    settings.KEY_PEPPERS = {"old": "o" * 40}
    settings.CURRENT_PEPPER_ID = "old"
    created = keys.create_api_key(tenant=TenantFactory(), name="k", kind=KeyKind.MANAGEMENT)
    with override_settings(KEY_PEPPERS={"new": "n" * 40, "old": "o" * 40}, CURRENT_PEPPER_ID="new"):
        assert keys.authenticate_key(created.plaintext, kind=KeyKind.MANAGEMENT).pepper_id == "old"
        fresh = keys.create_api_key(tenant=created.api_key.tenant, name="k2")
        assert fresh.api_key.pepper_id == "new"
    with override_settings(KEY_PEPPERS={"new": "n" * 40}, CURRENT_PEPPER_ID="new"):
        with pytest.raises(keys.InvalidKey):
            keys.authenticate_key(created.plaintext, kind=KeyKind.MANAGEMENT)


def test_it_writes_last_used_at_most_once_a_minute(django_assert_num_queries):
    created = keys.create_api_key(tenant=TenantFactory(), name="k", kind=KeyKind.MANAGEMENT)
    api_key = created.api_key
    t0 = timezone.now()
    keys.touch_last_used(api_key, t0)
    with django_assert_num_queries(0):
        keys.touch_last_used(api_key, t0 + timedelta(seconds=30))
    keys.touch_last_used(api_key, t0 + timedelta(seconds=61))
    api_key.refresh_from_db()
    assert api_key.last_used_at == t0 + timedelta(seconds=61)


def test_it_rejects_invalid_allowed_models():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        keys.create_api_key(tenant=TenantFactory(), name="k", allowed_models=[""])
    assert ApiKey.objects.count() == 0


def test_the_creator_is_recorded():
    user = UserFactory()
    created = keys.create_api_key(tenant=TenantFactory(), name="k", created_by=user)
    assert created.api_key.created_by == user


def test_a_derived_secret_makes_a_well_formed_key_and_a_malformed_one_is_refused():
    secret = keys.secret_from_bytes(hashlib.sha256(b"salt").digest())
    assert secret == keys.secret_from_bytes(hashlib.sha256(b"salt").digest())
    assert secret != keys.secret_from_bytes(hashlib.sha256(b"pepper").digest())
    created = keys.create_api_key(tenant=TenantFactory(), name="derived", secret=secret)
    assert keys.parse_key(created.plaintext).secret == secret
    with pytest.raises(ValueError, match="32 bytes"):
        keys.secret_from_bytes(b"short")
    with pytest.raises(ValueError, match="malformed"):
        keys.create_api_key(tenant=TenantFactory(), name="bad", secret="x" * 10)
