"""Shared steps of the browser tests."""

from __future__ import annotations

import re

from tests.factories import PASSWORD


def log_in(page, base_url: str, email: str, password: str = PASSWORD) -> None:
    """Log in through the login form and wait for the overview."""
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))
