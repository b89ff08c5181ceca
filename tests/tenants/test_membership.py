"""Removing a member revokes the keys they made in that tenant and tells its owners and admins."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from berth.redis import get_redis, names
from tenants import keys, membership
from tenants.constants import KeyKind, Role
from tenants.models import ApiKey, Membership, User
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team():
    tenant = TenantFactory(name="Acme")
    owner, admin = member(tenant, Role.OWNER), member(tenant, Role.ADMIN)
    leaving, staying = member(tenant, Role.MEMBER), member(tenant, Role.MEMBER)
    elsewhere = TenantFactory()
    Membership.objects.create(tenant=elsewhere, user=leaving, role=Role.MEMBER)
    made = {
        "inference": [
            keys.create_api_key(tenant=tenant, name=f"ci-{n}", created_by=leaving) for n in range(2)
        ],
        "management": keys.create_api_key(
            tenant=tenant, name="ops", created_by=leaving, kind=KeyKind.MANAGEMENT
        ),
        "colleague": keys.create_api_key(tenant=tenant, name="theirs", created_by=staying),
        "elsewhere": keys.create_api_key(tenant=elsewhere, name="other-org", created_by=leaving),
    }
    mail.outbox.clear()
    return {"tenant": tenant, "owner": owner, "admin": admin, "leaving": leaving, "keys": made}


def _mirrored(created) -> bool:
    return bool(get_redis().exists(names().api_key(created.api_key.lookup_id)))


def _assert_removed_and_revoked(team):
    made = team["keys"]
    assert not Membership.objects.filter(tenant=team["tenant"], user=team["leaving"]).exists()
    for created in [*made["inference"], made["management"]]:
        assert ApiKey.objects.get(pk=created.api_key.pk).is_revoked
    assert not any(_mirrored(created) for created in made["inference"])
    assert _mirrored(made["colleague"]) and _mirrored(made["elsewhere"])
    [notice] = mail.outbox
    assert sorted(notice.to) == sorted([team["owner"].email, team["admin"].email])
    assert team["leaving"].email in notice.subject
    for created in made["inference"]:
        assert created.api_key.display_prefix in notice.body
    assert created.plaintext.split("_", 1)[1] not in notice.body
    return notice


def test_the_service_revokes_their_keys_in_that_tenant_only_and_notifies_admins(team, redis_client):
    result = membership.remove_member(tenant=team["tenant"], user=team["leaving"], acting_user=team["owner"])
    assert len(result.revoked_keys) == 3
    notice = _assert_removed_and_revoked(team)
    assert team["owner"].email in notice.body  # who did it


def test_removing_through_the_members_api(team, redis_client):
    api = APIClient()
    api.force_login(team["admin"])
    leaving = Membership.objects.get(tenant=team["tenant"], user=team["leaving"])
    assert api.delete(f"/api/v1/members/{leaving.pk}/").status_code == 204
    _assert_removed_and_revoked(team)


def test_removing_from_the_console_team_page(client, team, redis_client):
    client.force_login(team["owner"])
    client.post("/switch/", {"tenant": str(team["tenant"].pk)})
    leaving = Membership.objects.get(tenant=team["tenant"], user=team["leaving"])
    response = client.post(f"/team/members/{leaving.pk}/remove/", follow=True)
    assert response.status_code == 200
    _assert_removed_and_revoked(team)


def test_a_refused_removal_revokes_nothing(team, redis_client):
    owner = team["owner"]
    Membership.objects.filter(tenant=team["tenant"], user=team["admin"]).delete()
    mine = keys.create_api_key(tenant=team["tenant"], name="owner-key", created_by=owner)
    with pytest.raises(ValidationError, match="at least one owner"):
        membership.remove_member(tenant=team["tenant"], user=owner, acting_user=owner)
    assert ApiKey.objects.get(pk=mine.api_key.pk).is_usable and _mirrored(mine)
    assert mail.outbox == []


def test_a_membership_deleted_with_the_orm_takes_the_keys_too(team, redis_client):
    Membership.objects.filter(tenant=team["tenant"], user=team["leaving"]).delete()
    made = team["keys"]
    assert not any(_mirrored(created) for created in made["inference"])
    assert _mirrored(made["colleague"]) and _mirrored(made["elsewhere"])


def test_deleting_a_user_revokes_their_keys_everywhere(team, redis_client):
    team["leaving"].delete()
    made = team["keys"]
    assert not any(_mirrored(created) for created in [*made["inference"], made["elsewhere"]])
    assert ApiKey.objects.get(pk=made["management"].api_key.pk).is_revoked
    assert _mirrored(made["colleague"])


def test_staff_removing_a_membership_in_the_admin_goes_through_the_service(client, team, redis_client):
    staff = User.objects.create_superuser(email="staff@berth.test", password="x-Long-pass-1")
    client.force_login(staff)
    leaving = Membership.objects.get(tenant=team["tenant"], user=team["leaving"])
    response = client.post(f"/admin/tenants/membership/{leaving.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    notice = _assert_removed_and_revoked(team)
    assert staff.email in notice.body
    last_owner = Membership.objects.get(tenant=team["tenant"], user=team["owner"])
    Membership.objects.filter(tenant=team["tenant"], user=team["admin"]).delete()
    response = client.post(f"/admin/tenants/membership/{last_owner.pk}/delete/", {"post": "yes"}, follow=True)
    assert response.status_code == 200 and "at least one owner" in response.content.decode()
    assert Membership.objects.filter(pk=last_owner.pk).exists()
