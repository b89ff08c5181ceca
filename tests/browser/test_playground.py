"""The playground says what went wrong when the gateway cannot answer (a model with no worker)."""

from __future__ import annotations

import pytest

from tenants import mirror
from tenants.constants import Role
from tests.browser.helpers import log_in
from tests.factories import TenantFactory, member
from tests.gateway.conftest import register_model
from tests.registry.factories import ModelFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_playground_shows_gateway_errors(live_server, page, redis_client, console_gateway):
    tenant = TenantFactory()
    mirror.publish_tenant(tenant)
    ModelFactory(name="pg-cold")
    # Known to the gateway but without any worker: the gateway holds the request, then says 503.
    register_model(redis_client, [], name="pg-cold")
    user = member(tenant, Role.MEMBER)
    log_in(page, live_server.url, user.email)
    page.goto(f"{live_server.url}/playground/")
    message = page.get_by_label("Message")
    message.fill("Hello?")
    message.press("Shift+Enter")  # a new line, not a send
    assert message.input_value() == "Hello?\n"
    message.press("Enter")  # sends
    error = page.locator("#chat-error")
    error.wait_for(state="visible", timeout=20_000)
    assert "starting from zero" in error.inner_text()
