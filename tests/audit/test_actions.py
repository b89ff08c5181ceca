"""The services record their actions: who, what, before/after, in the same transaction."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import transaction
from django.test import Client
from django.utils import timezone

from audit import expiry
from audit.models import AuditEntry
from models_registry import catalog
from models_registry.models import Model, Price
from tenants import accounts, invitations, keys, membership
from tenants.constants import Role, TenantStatus
from tests.factories import PASSWORD, TenantFactory, UserFactory, member

pytestmark = pytest.mark.django_db


def actions() -> list[str]:
    return list(AuditEntry.objects.order_by("seq").values_list("action", flat=True))


def test_a_rolled_back_change_leaves_no_entry():
    tenant = TenantFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        keys.create_api_key(tenant=tenant, name="never")
        raise RuntimeError
    assert "api_key.created" not in actions()


def test_member_lifecycle_is_recorded():
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER, email_verified=True)
    user = member(tenant, Role.MEMBER)
    keys.create_api_key(tenant=tenant, name="theirs", created_by=user)
    accounts.change_role(membership=tenant.memberships.get(user=user), role=Role.ADMIN)
    membership.remove_member(tenant=tenant, user=user, acting_user=owner)
    changed = AuditEntry.objects.get(action="member.role_changed")
    assert (changed.before, changed.after) == ({"role": "member"}, {"role": "admin"})
    assert actions()[-2:] == ["member.removed", "api_key.revoked"]
    removed = AuditEntry.objects.get(action="member.removed")
    assert removed.before == {"user": user.email, "role": "admin"}


def test_invitations_are_recorded():
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER, email_verified=True)
    sent = invitations.invite(
        tenant=tenant, email="new@x.test", role=Role.MEMBER, invited_by=owner, base_url="http://t"
    )
    invitations.revoke(invitation=sent.invitation)
    invitations.revoke(invitation=sent.invitation)  # already revoked: nothing more
    token = sent.url.rstrip("/").rsplit("/", 1)[1]
    again = invitations.invite(
        tenant=tenant, email="new@x.test", role=Role.MEMBER, invited_by=owner, base_url="http://t"
    )
    person = UserFactory(email="new@x.test", email_verified=True)
    invitations.accept(token=again.url.rstrip("/").rsplit("/", 1)[1], user=person)
    assert token
    got = [a for a in actions() if a.startswith("invitation.")]
    assert got == ["invitation.sent", "invitation.revoked", "invitation.sent", "invitation.accepted"]
    assert AuditEntry.objects.get(action="invitation.accepted").actor_id == person.pk


def test_suspension_plan_and_settings_changes_are_recorded():
    tenant = TenantFactory()
    accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)
    accounts.set_status(tenant=tenant, status=TenantStatus.SUSPENDED)  # no change, no entry
    accounts.set_status(tenant=tenant, status=TenantStatus.ACTIVE)
    tenant.name = "Renamed"
    accounts.update_tenant(tenant=tenant)
    assert actions() == ["tenant.suspended", "tenant.resumed", "tenant.settings_changed"]
    assert AuditEntry.objects.get(action="tenant.settings_changed").after == {"name": "Renamed"}


def test_the_console_records_a_spend_limit_change_with_before_and_after():
    tenant = TenantFactory()
    owner = member(tenant, Role.OWNER, email_verified=True)
    client = Client()
    client.login(email=owner.email, password=PASSWORD)
    response = client.post(
        "/settings/",
        {
            "form": "billing",
            "billing-spend_limit": "50",
            "billing-alert_thresholds": ["50", "80", "100"],
            "billing-billing_email": "",
        },
    )
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="billing.spend_limit_changed")
    assert entry.before["spend_limit"] is None and entry.after["spend_limit"] == "50"
    assert entry.actor_id == owner.pk and entry.tenant_id == tenant.pk


def test_logins_failed_logins_and_logouts_are_recorded():
    tenant = TenantFactory()
    user = member(tenant, Role.OWNER)
    client = Client(REMOTE_ADDR="198.51.100.4")
    client.post("/accounts/login/", {"username": user.email, "password": "wrong-password-123"})
    client.post("/accounts/login/", {"username": user.email, "password": PASSWORD})
    client.post("/accounts/logout/")
    assert [a for a in actions() if a.startswith("auth.")] == [
        "auth.login_failed",
        "auth.login",
        "auth.logout",
    ]
    failed = AuditEntry.objects.get(action="auth.login_failed")
    assert failed.after == {"username": user.email} and failed.ip == "198.51.100.4"
    assert "wrong-password" not in str(failed.after) + failed.summary


def test_models_and_prices_are_recorded():
    model = Model(name="audit-tiny", source="sshleifer/tiny-gpt2")
    catalog.save_model(model=model)
    model.context_length = 4096
    catalog.save_model(model=model)
    catalog.add_price(
        price=Price(model=model, input_per_million=Decimal("0.5"), output_per_million=Decimal("1.5"))
    )
    assert actions() == ["model.created", "model.changed", "price.added"]
    changed = AuditEntry.objects.get(action="model.changed")
    assert changed.after == {"context_length": 4096}
    assert AuditEntry.objects.get(action="price.added").after["input_per_million"] == "0.5"


def test_expired_keys_are_recorded_once():
    tenant = TenantFactory()
    created = keys.create_api_key(
        tenant=tenant, name="short", expires_at=timezone.now() + timedelta(minutes=5)
    )
    assert expiry.record_expired_keys() == 0
    later = timezone.now() + timedelta(minutes=10)
    assert expiry.record_expired_keys(now=later) == 1
    assert expiry.record_expired_keys(now=later) == 0
    entry = AuditEntry.objects.get(action="api_key.expired")
    assert entry.target_id == str(created.api_key.pk) and entry.actor_kind == "system"
