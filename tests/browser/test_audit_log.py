"""An owner opens the Audit log and sees who created and who revoked each key."""

from __future__ import annotations

import pytest

from tenants.constants import Role
from tests.browser.helpers import log_in
from tests.factories import TenantFactory, member

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_owner_sees_who_created_and_revoked_each_key(live_server, page, shot):
    tenant = TenantFactory(name="Hopper Labs", slug="hopper")
    owner = member(tenant, Role.OWNER, email="grace@hopper.test", email_verified=True)
    dev = member(tenant, Role.MEMBER, email="ada@hopper.test", email_verified=True)

    log_in(page, live_server.url, dev.email)
    assert page.get_by_role("link", name="Audit log").count() == 0  # members do not get the page
    page.goto(f"{live_server.url}/keys/")
    page.get_by_label("Name").fill("ci-runner")
    page.get_by_role("button", name="Create key").click()
    page.get_by_label("New API key").wait_for()
    prefix = tenant.api_keys.get(name="ci-runner").display_prefix
    page.context.clear_cookies()

    log_in(page, live_server.url, owner.email)
    page.goto(f"{live_server.url}/keys/")
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke").click()
    page.wait_for_selector("text=Revoked “ci-runner”")

    page.get_by_role("link", name="Audit log").click()
    page.wait_for_selector("h1:has-text('Audit log')")
    page.get_by_label("Action").fill("api_key")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit/?action=api_key*")
    rows = page.locator("table.audit tbody tr")
    assert rows.count() == 2
    revoked, created = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert "api_key.revoked" in revoked and "grace@hopper.test" in revoked and "ci-runner" in revoked
    assert "api_key.created" in created and "ada@hopper.test" in created and prefix in created
    shot(page, "audit-log")
