"""Issue 14 end to end: a tenant adds a LoRA adapter in the console and calls it with the
``openai`` SDK through the gateway to a real CPU engine worker; its tokens show at the adapter's
price on the console's usage page, ``/api/v1/usage`` and the invoice; another tenant gets 404.

The adapter is a tiny PEFT adapter of the tiny base model, made offline in a folder under the
allowed sources. The base is deployed with ``max_loras`` > 0 and the worker was started from the
node agent's launch description of such a deployment (``tests/e2e/conftest.py``).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from billing.invoicing import close_period
from billing.models import UsageRecord
from billing.money import format_money, round_money
from billing.periods import period_containing
from models_registry.constants import AdapterStatus
from models_registry.models import Deployment, LoraAdapter
from tenants.constants import Role
from tests.e2e.conftest import CHAT, MAX_LORAS
from tests.factories import member
from tests.gateway.conftest import make_key, make_tenant, set_routes
from tests.gateway.test_usage import drain
from tests.registry.factories import priced_model

pytestmark = [pytest.mark.django_db, pytest.mark.engine, pytest.mark.processes]

MESSAGES = [{"role": "user", "content": "def main():"}]


@pytest.fixture
def world(
    e2e_gateway, e2e_workers, e2e_files, redis_client, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.ADAPTER_ALLOWED_SOURCES = [f"{e2e_files['adapter_root']}/"]
    settings.ADAPTER_DIR = tmp_path / "fetched"
    with django_capture_on_commit_callbacks(execute=True):
        base = priced_model(CHAT, "2000", "8000", source=str(e2e_files["base"]))
        Deployment.objects.create(model=base, engine="cpu", max_loras=MAX_LORAS, max_lora_rank=16)
    set_routes(redis_client, CHAT, [e2e_workers["chat"]])
    tenant = make_tenant()
    return {"tenant": tenant, "owner": member(tenant, Role.OWNER), "base": base}


def add_in_console(client, world, files, capture) -> LoraAdapter:
    client.force_login(world["owner"])
    client.post("/switch/", {"tenant": str(world["tenant"].pk)})
    form = client.get("/adapters/").content.decode()
    assert f'<option value="{CHAT}">' in form
    with capture(execute=True):  # the mirror write runs after the commit
        response = client.post(
            "/adapters/", {"name": "support", "base_model": CHAT, "source": str(files["adapter"])}
        )
    assert response.status_code == 302, response.content.decode()[-2000:]
    page = client.get("/adapters/").content.decode()
    assert "is ready to call" in page
    return LoraAdapter.objects.get(tenant=world["tenant"], name="support")


def test_an_adapter_added_in_the_console_is_served_metered_priced_and_private(
    world, client, e2e_files, e2e_gateway, django_capture_on_commit_callbacks
):
    tenant = world["tenant"]
    adapter = add_in_console(client, world, e2e_files, django_capture_on_commit_callbacks)
    served = f"{tenant.slug}/support"
    assert adapter.served_name == served and adapter.status == AdapterStatus.READY
    price = adapter.current_price()
    assert price is not None and price.input_per_million >= Decimal("2000")

    sdk = openai.OpenAI(base_url=e2e_gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    reply = sdk.chat.completions.create(model=served, messages=MESSAGES, max_tokens=12, temperature=0)
    stream = sdk.chat.completions.create(
        model=served,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    base = sdk.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=12, temperature=0)

    assert reply.model == served
    assert streamed == reply.choices[0].message.content
    assert reply.choices[0].message.content != base.choices[0].message.content  # the adapter answered
    assert served in {m.id for m in sdk.models.list()}
    # The Responses API and Anthropic's Messages answer through the adapter too, under its name.
    answered = sdk.responses.create(
        model=served, input=MESSAGES[0]["content"], max_output_tokens=12, temperature=0
    )
    assert answered.model == served
    assert answered.output_text == reply.choices[0].message.content
    claude = anthropic.Anthropic(base_url=e2e_gateway.url, api_key=sdk.api_key, max_retries=0)
    message = claude.messages.create(
        model=served, max_tokens=12, messages=MESSAGES, extra_body={"temperature": 0}
    )
    assert message.model == served
    assert message.content[0].text == reply.choices[0].message.content

    other = openai.OpenAI(base_url=e2e_gateway.url + "/v1", api_key=make_key(make_tenant()), max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        other.chat.completions.create(model=served, messages=MESSAGES, max_tokens=2)
    assert caught.value.code == "model_not_found"
    assert served not in {m.id for m in other.models.list()}

    drain()
    records = list(UsageRecord.objects.filter(tenant=tenant, model=served))
    engine_said = [
        (reply.usage.prompt_tokens, reply.usage.completion_tokens),
        (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens),
        (answered.usage.input_tokens, answered.usage.output_tokens),
        (message.usage.input_tokens, message.usage.output_tokens),
    ]
    assert sorted((r.prompt_tokens, r.completion_tokens) for r in records) == sorted(engine_said)
    assert not UsageRecord.objects.exclude(tenant=tenant).filter(model=served).exists()
    prompt = sum(p for p, _ in engine_said)
    completion = sum(c for _, c in engine_said)
    cached = sum(r.cached_tokens for r in records)  # of the prompt, served from the prefix cache
    cost = (
        (prompt - cached) * price.input_per_million
        + cached * price.cached_input_price
        + completion * price.output_per_million
    ) / 1_000_000

    # The console's usage page.
    day = timezone.now().date().isoformat()
    page = client.get("/usage/", {"start": day, "end": day}).content.decode()
    row = next(line for line in page.splitlines() if f"<code>{served}</code>" in line)
    assert (
        f'<td class="num">{prompt:,}</td><td class="num">{cached:,}</td><td class="num">{completion:,}</td>'
        in row
    )
    assert format_money(round_money(cost, "USD"), "USD") in row

    # The API.
    api = APIClient()
    api.force_login(world["owner"])
    usage = api.get("/api/v1/usage", {"start": day, "end": day}).json()
    [mine] = [r for r in usage["data"] if r["model"] == served]
    assert (mine["prompt_tokens"], mine["completion_tokens"], mine["requests"]) == (prompt, completion, 4)
    assert Decimal(mine["cost"]) == cost.quantize(Decimal(mine["cost"]))

    # The invoice.
    period = period_containing(timezone.now())
    invoice = close_period(tenant=tenant, period=period, now=period.end + timedelta(hours=1)).invoice
    lines = {(line.kind): line for line in invoice.lines.filter(model=served)}
    assert lines["input"].tokens == prompt - cached and lines["output"].tokens == completion
    assert lines["input"].unit_price_per_million == price.input_per_million
    assert lines["output"].unit_price_per_million == price.output_per_million
    expected = [
        ("input", prompt - cached, price.input_per_million),
        ("output", completion, price.output_per_million),
    ]
    if cached:
        expected.append(("cached", cached, price.cached_input_price))
    assert set(lines) == {kind for kind, _, _ in expected}
    for kind, count, unit in expected:
        exact = Decimal(count) * unit / 1_000_000
        assert lines[kind].amount == exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)

    # The other tenant's console does not list it.
    outsider = make_tenant()
    client.force_login(member(outsider, Role.OWNER))
    client.post("/switch/", {"tenant": str(outsider.pk)})
    assert served not in client.get("/adapters/").content.decode()
    assert client.post(f"/adapters/{adapter.pk}/delete/").status_code == 404


def test_the_engine_admin_routes_stay_closed_to_the_tenant(
    world, client, e2e_files, e2e_gateway, django_capture_on_commit_callbacks
):
    add_in_console(client, world, e2e_files, django_capture_on_commit_callbacks)
    key = make_key(world["tenant"])
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        response = httpx.post(
            e2e_gateway.url + path,
            json={"lora_name": f"{world['tenant'].slug}/support", "lora_path": str(e2e_files["adapter"])},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert response.status_code == 404
