"""Console: team management and invitations by email."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from rest_framework.test import APIClient

from tenants.constants import Role
from tenants.models import ApiKey, Invitation, Membership, User
from tests.factories import PASSWORD, TenantFactory, UserFactory, member

pytestmark = pytest.mark.django_db(transaction=True)  # invitation emails go out on commit


def invite_link() -> str:
    return re.search(r"https?://[^/]+(/invite/\S+/)", mail.outbox[-1].body).group(1)


def test_an_admin_invites_and_a_new_person_joins_by_creating_an_account(client):
    tenant = TenantFactory(name="Team Org")
    client.force_login(member(tenant, Role.ADMIN))
    response = client.post("/team/", {"email": "New@Person.test", "role": "member"})
    assert response.status_code == 302
    assert mail.outbox[-1].to == ["new@person.test"] and "Team Org" in mail.outbox[-1].subject
    invitation = Invitation.objects.get()
    assert len(invitation.token_hash) == 64 and invitation.token_hash not in mail.outbox[-1].body
    link = invite_link()
    client.logout()
    assert "Choose a password" in client.get(link).content.decode()
    joined = client.post(link, {"password": "fresh-Pass-4431"})
    assert joined.status_code == 302
    membership = Membership.objects.get(tenant=tenant, user__email="new@person.test")
    assert membership.role == Role.MEMBER
    assert membership.user.has_perm("tenants.use_api_keys", tenant)
    # Single use.
    assert client.get(link).status_code == 404


def test_an_existing_account_accepts_after_logging_in(client):
    tenant = TenantFactory()
    other_owner = member(TenantFactory(), Role.OWNER)
    client.force_login(member(tenant, Role.OWNER))
    client.post("/team/", {"email": other_owner.email, "role": "billing"})
    link = invite_link()
    client.logout()
    assert "Log in" in client.get(link).content.decode()
    client.post("/accounts/login/", {"username": other_owner.email, "password": PASSWORD})
    assert client.post(link).status_code == 302
    assert Membership.objects.get(tenant=tenant, user=other_owner).role == Role.BILLING


def test_someone_else_cannot_use_the_link(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    client.post("/team/", {"email": "invited@x.test", "role": "member"})
    link = invite_link()
    client.force_login(UserFactory(email="intruder@x.test"))
    response = client.post(link)
    assert (
        response.status_code == 200
        and "this invitation is for invited@x.test" in response.content.decode().lower()
    )
    assert not Membership.objects.filter(tenant=tenant, user__email="intruder@x.test").exists()


def test_a_revoked_invitation_stops_working(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    client.post("/team/", {"email": "late@x.test", "role": "member"})
    link = invite_link()
    invitation = Invitation.objects.get()
    client.post(f"/team/invitations/{invitation.pk}/revoke/")
    client.logout()
    assert client.get(link).status_code == 404


def test_admins_cannot_make_owners_but_owners_can(client):
    tenant = TenantFactory()
    admin = member(tenant, Role.ADMIN)
    target = Membership.objects.get(user=member(tenant, Role.MEMBER), tenant=tenant)
    client.force_login(admin)
    client.post(f"/team/members/{target.pk}/role/", {"role": "owner"})
    target.refresh_from_db()
    assert target.role == Role.MEMBER
    body = client.post("/team/", {"email": "x@x.test", "role": "owner"}).content.decode()
    assert "Only an owner" in body and not Invitation.objects.exists()
    client.force_login(member(tenant, Role.OWNER))
    client.post(f"/team/members/{target.pk}/role/", {"role": "owner"})
    target.refresh_from_db()
    assert target.role == Role.OWNER


def test_members_see_the_team_but_cannot_change_it(client):
    tenant = TenantFactory()
    plain = member(tenant, Role.MEMBER)
    owner_membership = Membership.objects.get(user=member(tenant, Role.OWNER), tenant=tenant)
    client.force_login(plain)
    page = client.get("/team/")
    assert page.status_code == 200 and "Invite someone" not in page.content.decode()
    assert client.post(f"/team/members/{owner_membership.pk}/remove/").status_code == 403
    assert client.post("/team/", {"email": "x@x.test", "role": "member"}).status_code == 403
    assert Membership.objects.filter(pk=owner_membership.pk).exists()


def test_another_tenants_member_cannot_be_touched(client):
    foreign = Membership.objects.get(user=member(TenantFactory(), Role.MEMBER))
    client.force_login(member(TenantFactory(), Role.OWNER))
    assert client.post(f"/team/members/{foreign.pk}/remove/").status_code == 404
    assert client.post(f"/team/members/{foreign.pk}/role/", {"role": "admin"}).status_code == 404
    assert Membership.objects.filter(pk=foreign.pk, role=Role.MEMBER).exists()


def test_removing_a_member_from_the_console(client):
    tenant = TenantFactory()
    leaving = Membership.objects.get(user=member(tenant, Role.MEMBER))
    client.force_login(member(tenant, Role.OWNER))
    client.post(f"/team/members/{leaving.pk}/remove/")
    assert not Membership.objects.filter(pk=leaving.pk).exists()


def test_invitations_through_the_api(client):
    tenant = TenantFactory()
    api = APIClient()
    api.force_login(member(tenant, Role.ADMIN))
    created = api.post("/api/v1/invitations/", {"email": "api@x.test", "role": "member"}, format="json")
    assert created.status_code == 201 and created.json()["email"] == "api@x.test"
    assert (
        api.post("/api/v1/invitations/", {"email": "o@x.test", "role": "owner"}, format="json").status_code
        == 403
    )
    assert [i["email"] for i in api.get("/api/v1/invitations/").json()["results"]] == ["api@x.test"]
    assert api.delete(f"/api/v1/invitations/{created.json()['id']}/").status_code == 204
    assert api.get("/api/v1/invitations/").json()["results"] == []
    outsider = APIClient()
    outsider.force_login(member(TenantFactory(), Role.OWNER))
    assert outsider.get(f"/api/v1/invitations/{created.json()['id']}/").status_code == 404


def test_an_account_made_by_accepting_is_verified_and_can_create_keys(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    client.post("/team/", {"email": "new@person.test", "role": "member"})
    link = invite_link()
    client.logout()
    client.post(link, {"password": "fresh-Pass-4431"})
    assert User.objects.get(email="new@person.test").email_verified  # the link was mailed there
    client.post("/keys/", {"name": "joined", "nonce": "n1"})
    assert ApiKey.objects.filter(name="joined", tenant=tenant).exists()


def test_an_unverified_account_with_the_invited_address_cannot_join(client):
    """Pre-hijacking: someone signed up first with the invited person's address."""
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    client.post("/team/", {"email": "victim@x.test", "role": "admin"})
    link = invite_link()
    squatter = UserFactory(email="victim@x.test", email_verified=False)
    client.force_login(squatter)
    page = client.get(link).content.decode()
    assert "Verify victim@x.test first" in page and "Accept and join" not in page
    refused = client.post(link, follow=True)
    assert "Verify your email address first" in refused.content.decode()
    assert not Membership.objects.filter(tenant=tenant, user=squatter).exists()
    assert Invitation.objects.pending().exists()  # still there for the real owner


def test_an_unverified_owner_cannot_invite(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER, email_verified=False))
    body = client.post("/team/", {"email": "anyone@x.test", "role": "member"}).content.decode()
    assert "Verify your email address first" in body
    assert not Invitation.objects.exists() and not mail.outbox


def test_invitations_are_capped_per_tenant_per_day_and_throttled(client, settings):
    settings.INVITATIONS_PER_TENANT_PER_DAY = 2
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "invitation": ("100/h", "3/h")}
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    for n in range(2):
        assert client.post("/team/", {"email": f"p{n}@x.test", "role": "member"}).status_code == 302
    capped = client.post("/team/", {"email": "p9@x.test", "role": "member"})
    assert capped.status_code == 200 and "the most it may" in capped.content.decode()
    assert Invitation.objects.count() == 2 and len(mail.outbox) == 2

    settings.INVITATIONS_PER_TENANT_PER_DAY = 50  # the per-account rate still holds
    throttled = client.post("/team/", {"email": "p10@x.test", "role": "member"})
    assert throttled.status_code == 429 and "Too many attempts" in throttled.content.decode()
