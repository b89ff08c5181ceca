"""A new user signs up, creates a key (shown once), sees it listed by prefix, and revokes it."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from berth.redis import names
from tenants.models import ApiKey
from tests.browser.helpers import log_in
from tests.factories import free_plan

pytestmark = pytest.mark.django_db(transaction=True)


def test_signup_create_key_list_and_revoke(live_server, page, shot, redis_client):
    free_plan()
    page.goto(f"{live_server.url}/signup/")
    shot(page, "signup")
    page.get_by_label("Work email").fill("grace@example.test")
    page.get_by_label("Organization name").fill("Hopper Labs")
    page.get_by_label("Password").fill("a-Long-pass-991")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_selector("h1:has-text('Check your email')")
    shot(page, "signup-check-email")

    # Logged in but not verified yet: no keys, and the banner says why and offers a new link.
    log_in(page, live_server.url, "grace@example.test", "a-Long-pass-991")
    page.goto(f"{live_server.url}/keys/")
    assert page.locator("#verify-banner").is_visible()
    page.get_by_label("Name").fill("too early")
    page.get_by_role("button", name="Create key").click()
    assert "Verify your email address first" in page.content()
    assert not ApiKey.objects.exists()
    shot(page, "keys-unverified")
    page.get_by_role("button", name="Resend the link").click()
    page.wait_for_selector("text=We sent a new link")
    assert len(mail.outbox) == 2

    link = re.search(r"https?://\S+/accounts/verify/\S+/", mail.outbox[-1].body).group(0)
    page.goto(link)
    page.wait_for_url(re.compile(r"/keys/$"))
    assert "is verified" in page.content()
    assert page.locator("#verify-banner").count() == 0

    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret_box = page.get_by_label("New API key")
    plaintext = secret_box.input_value()
    assert re.fullmatch(r"sk-berth-[A-Za-z0-9]{12}_[A-Za-z0-9]{43}", plaintext)
    page.get_by_role("button", name="Copy").click()
    assert page.get_by_role("button", name="Copied").is_visible()
    shot(page, "keys-created")

    api_key = ApiKey.objects.get(name="laptop")
    assert redis_client.exists(names().api_key(api_key.lookup_id))
    page.reload()  # re-POSTs the form: must not create a second key
    assert "already created" in page.content()
    assert ApiKey.objects.filter(name="laptop").count() == 1
    assert api_key.display_prefix in page.content()
    assert plaintext.split("_", 1)[1] not in page.content()

    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke").click()
    page.wait_for_selector("text=Revoked “laptop”")
    assert page.locator(".badge.revoked").count() == 1
    assert not redis_client.exists(names().api_key(api_key.lookup_id))
    shot(page, "keys-revoked")


def test_keyboard_only_signup_reaches_every_field(live_server, page):
    free_plan()
    page.goto(f"{live_server.url}/signup/")
    page.keyboard.press("Tab")  # skip link first
    focused = []
    for _ in range(8):
        page.keyboard.press("Tab")
        focused.append(
            page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
        )
    assert {"id_email", "id_organization", "id_password"} <= set(focused)
