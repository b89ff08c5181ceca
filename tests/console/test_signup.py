"""Console: signup, login, password reset."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from tenants.constants import Role
from tenants.models import Membership, Tenant, User
from tests.factories import PASSWORD, UserFactory, free_plan

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _plans():
    free_plan()


def test_signup_creates_user_tenant_and_owner_membership(client):
    response = client.post(
        "/signup/",
        {"email": "Ada@Example.test", "organization": "Analytical Engines", "password": "a-Long-pass-991"},
    )
    assert response.status_code == 302 and response["Location"] == "/keys/"
    user = User.objects.get(email="ada@example.test")
    tenant = Tenant.objects.get(name="Analytical Engines")
    assert tenant.slug == "analytical-engines" and tenant.plan.slug == "free"
    assert Membership.objects.get(user=user, tenant=tenant).role == Role.OWNER
    assert user.has_perm("tenants.manage_members", tenant)
    # Logged in straight away, in the new organization.
    page = client.get("/keys/")
    assert page.status_code == 200 and "Analytical Engines" in page.content.decode()


def test_signup_reports_form_errors_and_writes_nothing(client):
    UserFactory(email="taken@example.test")
    response = client.post("/signup/", {"email": "taken@example.test", "organization": "", "password": "123"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "already exists" in body
    assert "This field is required" in body
    assert "too short" in body or "too common" in body or "entirely numeric" in body
    assert Tenant.objects.count() == 0
    assert User.objects.count() == 1


def test_duplicate_organization_names_get_distinct_slugs(client):
    for n, email in enumerate(["a@x.test", "b@x.test"]):
        client.post(
            "/signup/", {"email": email, "organization": "Same Name", "password": f"pass-Word-{n}xyz"}
        )
        client.logout()
    assert sorted(Tenant.objects.values_list("slug", flat=True)) == ["same-name", "same-name-2"]


def test_login_and_logout(client):
    user = UserFactory()
    response = client.post("/accounts/login/", {"username": user.email, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_a_wrong_password_says_what_to_do(client):
    user = UserFactory()
    body = client.post("/accounts/login/", {"username": user.email, "password": "nope"}).content.decode()
    assert "do not match" in body and "reset" in body


def test_password_reset_sends_a_working_link(client):
    user = UserFactory()
    client.post("/accounts/password_reset/", {"email": user.email})
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/reset/\S+)", mail.outbox[0].body).group(1)
    form = client.get(link, follow=True)
    assert form.status_code == 200
    done = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "brand-New-pass-77", "new_password2": "brand-New-pass-77"},
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password("brand-New-pass-77")
