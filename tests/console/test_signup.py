"""Console: sign-up with email verification, login, password reset, and their throttling."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants import keys
from tenants.constants import KeyKind, Role
from tenants.models import ApiKey, Membership, Tenant, User
from tests.factories import PASSWORD, TenantFactory, UserFactory, free_plan, member

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "brand-New-pass-77"
SIGNUP_PASSWORD = "a-Long-pass-991"


@pytest.fixture(autouse=True)
def _plans():
    free_plan()


@pytest.fixture
def sign_up(client, django_capture_on_commit_callbacks):
    """POST the sign-up form, running the mails queued for after commit."""

    def post(email: str, organization: str = "Analytical Engines", password: str = SIGNUP_PASSWORD, **meta):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(
                "/signup/", {"email": email, "organization": organization, "password": password}, **meta
            )

    return post


def verify_link() -> str:
    return re.search(r"https?://[^/]+(/accounts/verify/\S+/)", mail.outbox[-1].body).group(1)


def page_text(response, email: str = "") -> str:
    """The page without what differs between any two requests (CSRF tokens) and the address."""
    body = response.content.decode()
    return re.sub(r"[A-Za-z0-9]{64}", "CSRF", body.replace(email, "EMAIL") if email else body)


def reset_link() -> str:
    return re.search(r"https?://[^/]+(/accounts/reset/\S+)", mail.outbox[-1].body).group(1)


def test_signup_creates_an_unverified_owner_and_mails_a_link(client, sign_up):
    response = sign_up("Ada@Example.test")
    assert response.status_code == 200 and "Check your email" in response.content.decode()
    user = User.objects.get(email="ada@example.test")
    tenant = Tenant.objects.get(name="Analytical Engines")
    assert not user.email_verified
    assert tenant.slug == "analytical-engines" and tenant.plan.slug == "free"
    assert Membership.objects.get(user=user, tenant=tenant).role == Role.OWNER
    assert user.has_perm("tenants.manage_members", tenant)
    assert mail.outbox[-1].to == ["ada@example.test"] and "/accounts/verify/" in mail.outbox[-1].body
    # Not logged in by the form: the same answer is given for addresses that have an account.
    assert client.get("/keys/").status_code == 302


def test_an_unverified_account_logs_in_but_cannot_create_keys_and_sees_why(client, sign_up):
    sign_up("ada@example.test")
    client.post("/accounts/login/", {"username": "ada@example.test", "password": "a-Long-pass-991"})
    page = client.get("/keys/").content.decode()
    assert "Verify your email address" in page and "Resend the link" in page
    refused = client.post("/keys/", {"name": "laptop", "nonce": "n1"})
    assert "Verify your email address first" in refused.content.decode()
    assert not ApiKey.objects.exists()


def test_the_link_verifies_only_while_logged_in_as_that_account(client, sign_up):
    sign_up("ada@example.test")
    link = verify_link()
    assert client.get(link)["Location"].startswith("/accounts/login/")  # logged out: log in first
    client.force_login(UserFactory(email="someone@else.test"))
    assert client.get(link).status_code == 400
    assert not User.objects.get(email="ada@example.test").email_verified
    client.post("/accounts/login/", {"username": "ada@example.test", "password": "a-Long-pass-991"})
    assert client.get(link)["Location"] == "/keys/"
    assert User.objects.get(email="ada@example.test").email_verified
    client.post("/keys/", {"name": "laptop", "nonce": "n1"})
    assert ApiKey.objects.filter(name="laptop").exists()
    assert "Verify your email address" not in client.get("/keys/").content.decode()


def test_an_expired_or_tampered_link_is_refused_and_can_be_resent(
    client, sign_up, django_capture_on_commit_callbacks
):
    sign_up("ada@example.test")
    link = verify_link()
    client.post("/accounts/login/", {"username": "ada@example.test", "password": "a-Long-pass-991"})
    with time_machine.travel(timezone.now() + timedelta(hours=73)):
        expired = client.get(link)
    assert expired.status_code == 400 and "expired" in expired.content.decode()
    assert client.get(link[:-3] + "xx/").status_code == 400
    assert not User.objects.get(email="ada@example.test").email_verified
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/accounts/verify/resend/")
    assert len(mail.outbox) == 2
    assert client.get(verify_link())["Location"] == "/keys/"
    assert User.objects.get(email="ada@example.test").email_verified


def test_signup_with_an_existing_address_answers_the_same_and_mails_the_owner(client, sign_up):
    owner = UserFactory(email="taken@example.test")
    fresh = sign_up("new@example.test", organization="One")
    taken = sign_up("Taken@Example.test", organization="Two")
    assert fresh.status_code == taken.status_code == 200

    assert page_text(fresh, "new@example.test") == page_text(taken, "taken@example.test")
    assert not Tenant.objects.filter(name="Two").exists()
    assert User.objects.filter(email__iexact="taken@example.test").count() == 1
    notice = mail.outbox[-1]
    assert notice.to == [owner.email] and "already has one" in notice.body
    assert "/accounts/verify/" not in notice.body and "/accounts/password_reset/" in notice.body
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


def test_signup_reports_form_errors_and_writes_nothing(client):
    response = client.post("/signup/", {"email": "not-an-address", "organization": "", "password": "123"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Enter a valid email address" in body
    assert "This field is required" in body
    assert "too short" in body or "too common" in body or "entirely numeric" in body
    assert Tenant.objects.count() == 0 and User.objects.count() == 0


def test_duplicate_organization_names_get_distinct_slugs(sign_up):
    for n, email in enumerate(["a@x.test", "b@x.test"]):
        sign_up(email, organization="Same Name", password=f"pass-Word-{n}xyz")
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
    form = client.get(reset_link(), follow=True)
    assert form.status_code == 200
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert done.status_code == 302
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_password_reset_answers_the_same_for_unknown_addresses(client):
    UserFactory(email="known@example.test")
    known = client.post("/accounts/password_reset/", {"email": "known@example.test"}, follow=True)
    unknown = client.post("/accounts/password_reset/", {"email": "unknown@example.test"}, follow=True)
    assert known.redirect_chain == unknown.redirect_chain
    assert page_text(known) == page_text(unknown)
    assert [m.to for m in mail.outbox] == [["known@example.test"]]


def test_a_password_reset_ends_other_sessions_verifies_and_offers_to_revoke_own_keys(client):
    tenant, elsewhere = TenantFactory(), TenantFactory()
    user = member(tenant, Role.OWNER, email_verified=False)
    colleague = member(tenant, Role.ADMIN)
    colleague_key = keys.create_api_key(tenant=tenant, name="theirs", created_by=colleague).api_key
    mine = [
        keys.create_api_key(tenant=tenant, name="inference", created_by=user).api_key,
        keys.create_api_key(tenant=tenant, name="script", created_by=user, kind=KeyKind.MANAGEMENT).api_key,
    ]
    Membership.objects.create(tenant=elsewhere, user=user, role=Role.MEMBER)
    mine.append(keys.create_api_key(tenant=elsewhere, name="elsewhere", created_by=user).api_key)

    intruder = Client()
    intruder.force_login(user)
    assert intruder.get("/").status_code == 200

    client.post("/accounts/password_reset/", {"email": user.email})
    form = client.get(reset_link(), follow=True)
    complete = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        follow=True,
    )
    body = complete.content.decode()
    assert "every other session of your account has ended" in body
    assert "Revoke my 3 API keys" in body
    assert intruder.get("/")["Location"].startswith("/accounts/login/")  # the other session is over
    user.refresh_from_db()
    assert user.email_verified  # the reset link proved the mailbox

    revoked = client.post("/accounts/keys/revoke/", follow=True)
    assert "Revoked 3 API keys" in revoked.content.decode()
    assert all(key.is_revoked for key in ApiKey.objects.filter(pk__in=[k.pk for k in mine]))
    assert not ApiKey.objects.get(pk=colleague_key.pk).is_revoked


def test_login_is_throttled_per_account_across_ips(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": ("100/h", "3/h")}
    user = UserFactory()
    for n in range(3):
        wrong = client.post(
            "/accounts/login/", {"username": user.email, "password": "nope"}, REMOTE_ADDR=f"10.0.0.{n}"
        )
        assert wrong.status_code == 200
    refused = client.post(
        "/accounts/login/", {"username": user.email, "password": PASSWORD}, REMOTE_ADDR="10.0.0.9"
    )
    assert refused.status_code == 429 and "Too many attempts" in refused.content.decode()
    assert client.get("/").status_code == 302  # even the right password did not log in
    other = UserFactory()
    assert client.post("/accounts/login/", {"username": other.email, "password": PASSWORD}).status_code == 302


def test_login_is_throttled_per_ip_across_accounts(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": ("3/h", "100/h")}
    for n in range(3):
        client.post(
            "/accounts/login/", {"username": f"guess{n}@x.test", "password": "nope"}, REMOTE_ADDR="10.1.1.1"
        )
    user = UserFactory()
    login = {"username": user.email, "password": PASSWORD}
    assert client.post("/accounts/login/", login, REMOTE_ADDR="10.1.1.1").status_code == 429
    assert client.post("/accounts/login/", login, REMOTE_ADDR="10.1.1.2").status_code == 302


def test_signup_and_password_reset_are_throttled_with_a_form_error(client, settings, sign_up):
    settings.THROTTLE_RATES = {
        **settings.THROTTLE_RATES,
        "signup": ("100/h", "1/h"),
        "password_reset": ("2/h", "100/h"),
    }
    sign_up("ada@example.test")
    again = sign_up("ada@example.test")
    assert again.status_code == 429 and "Too many attempts" in again.content.decode()
    for n in range(2):
        client.post("/accounts/password_reset/", {"email": f"r{n}@x.test"})
    refused = client.post("/accounts/password_reset/", {"email": "r9@x.test"})
    assert refused.status_code == 429 and "Too many attempts" in refused.content.decode()


def test_throttling_fails_open_when_the_cache_is_unreachable(client, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
        }
    }
    user = UserFactory()
    assert client.post("/accounts/login/", {"username": user.email, "password": PASSWORD}).status_code == 302


def test_the_admin_login_shares_the_login_throttle(client, settings):
    settings.THROTTLE_RATES = {**settings.THROTTLE_RATES, "login": ("100/h", "2/h")}
    staff = UserFactory(is_staff=True, is_superuser=True)
    client.post("/accounts/login/", {"username": staff.email, "password": "nope"})
    client.post("/admin/login/", {"username": staff.email, "password": "nope"})
    refused = client.post("/admin/login/", {"username": staff.email, "password": PASSWORD})
    assert refused.status_code == 429 and "Too many attempts" in refused.content.decode()
    assert client.get("/admin/").status_code == 302
    assert client.get("/admin/login/").status_code == 200
    other = UserFactory(is_staff=True, is_superuser=True)
    assert client.post("/admin/login/", {"username": other.email, "password": PASSWORD}).status_code == 302
    assert client.get("/admin/").status_code == 200
