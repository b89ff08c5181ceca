"""The whole tenant path in a real browser: sign up → verify the address → a streamed playground answer → a key → a
gateway call with the openai SDK → usage on the overview chart → invoice page → PDF download; a
plain member cannot see billing."""

from __future__ import annotations

import io
import re
from decimal import Decimal

import openai
import pytest
from django.utils import timezone
from pypdf import PdfReader

from billing import invoicing
from billing.models import UsageRecord
from billing.periods import period_containing
from tenants import accounts
from tenants.constants import Role
from tenants.models import Tenant
from tests.browser.helpers import log_in, sign_up_and_verify
from tests.factories import UserFactory, free_plan
from tests.gateway.conftest import register_model
from tests.gateway.test_usage import drain
from tests.registry.factories import ModelFactory, PriceFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_signup_to_gateway_call_to_usage_chart_to_invoice_pdf(
    live_server,
    page,
    shot,
    console_gateway,
    engines,
    redis_client,
    tmp_path,
):
    gateway = console_gateway
    free_plan()
    model = register_model(redis_client, engines, name="e2e-chat")
    PriceFactory(
        model=ModelFactory(name=model), input_per_million=Decimal("250"), output_per_million=Decimal("1000")
    )

    sign_up_and_verify(
        page,
        live_server.url,
        email="ada@example.test",
        organization="Lovelace Inc",
        password="a-Long-pass-991",
    )

    # The playground answers, streamed from the gateway with a key minted for the session.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Playground").click()
    page.get_by_label("Message").fill("Say hello to the harbour")
    page.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "() => (document.querySelector('.chat-msg.assistant .chat-text') || {}).textContent?.startsWith('tok')"
    )
    page.wait_for_function("() => document.getElementById('usage-last').textContent.includes('completion')")
    assert re.fullmatch(r"\d+ prompt \+ \d+ completion tokens", page.locator("#usage-last").inner_text())
    shot(page, "e2e-playground")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("first key")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_label("New API key").input_value()

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for question in ("What is a berth?", "Name three harbours.", "Count to five."):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=12
        )
        assert reply.choices[0].message.content
    drain()  # the usage consumer (a process under `manage.py up`)
    tenant = Tenant.objects.get(name="Lovelace Inc")
    records = list(UsageRecord.objects.filter(tenant=tenant))
    assert len(records) == 4  # the playground's answer is metered like any request
    playground_key = tenant.api_keys.get(name="Playground · ada@example.test")
    assert [r.api_key_id for r in records].count(playground_key.pk) == 1
    prompt = sum(r.prompt_tokens for r in records)
    completion = sum(r.completion_tokens for r in records)

    page.goto(f"{live_server.url}/")
    chart = page.get_by_role("img", name=re.compile("tokens per day", re.I))
    chart.wait_for()
    # The chart's data (json_script) carries this month's tokens of the model just called.
    series = page.evaluate("JSON.parse(document.getElementById('tokens-by-day').textContent)")
    assert sum(series["series"][model]) == prompt + completion
    assert page.evaluate("Chart.getChart(document.querySelector('canvas')) !== undefined")
    shot(page, "e2e-overview")

    # The period ends (here: closed as of its end) and the invoice appears.
    period = period_containing(timezone.now())
    invoice = invoicing.close_period(tenant=tenant, period=period, now=period.end).invoice
    expected = (Decimal(prompt) * Decimal("250") / 1_000_000).quantize(Decimal("0.01")) + (
        Decimal(completion) * 1000 / Decimal(1_000_000)
    ).quantize(Decimal("0.01"))
    assert invoice.total == expected
    page.get_by_role("link", name="Billing").click()
    page.get_by_role("link", name=invoice.number, exact=True).click()
    assert page.get_by_role("heading", name=re.compile(invoice.number)).is_visible()
    assert f"{prompt:,}" in page.content() and f"{completion:,}" in page.content()
    shot(page, "e2e-invoice")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download PDF").click()
    path = tmp_path / "invoice.pdf"
    download_info.value.save_as(path)
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(path.read_bytes())).pages)
    assert invoice.number in text and "Lovelace Inc" in text and f"{prompt:,}" in text

    # A plain member of the same organization sees usage but no billing.
    developer = UserFactory(email="dev@example.test")
    accounts.add_member(tenant=tenant, user=developer, role=Role.MEMBER)
    page.context.clear_cookies()
    log_in(page, live_server.url, "dev@example.test")
    assert page.get_by_role("link", name="Billing").count() == 0
    response = page.goto(f"{live_server.url}/billing/invoices/{invoice.pk}/pdf/")
    assert response.status == 403
    assert "does not include billing" in page.content()
    shot(page, "e2e-member-no-billing")
