"""Shared steps of the browser tests."""

from __future__ import annotations

import re

from django.core import mail

from tests.factories import PASSWORD


def log_in(page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Log in through the login form and wait for the overview."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def sign_up_and_verify(page, base_url: str, *, email: str, organization: str, password: str) -> None:
    """Sign up through the form, log in, and open the verification link from the sent email
    (Django's test email backend keeps it in ``mail.outbox``); ends on the keys page."""
    page.goto(f"{base_url}/signup/")
    page.get_by_label("Work email").fill(email)
    page.get_by_label("Organization name").fill(organization)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_selector("h1:has-text('Check your email')")
    message = next(m for m in reversed(mail.outbox) if m.to == [email])
    link = re.search(r"https?://\S+/accounts/verify/\S+/", message.body).group(0)
    log_in(page, base_url, email, password)
    page.goto(link)
    page.wait_for_url(re.compile(r"/keys/$"))
