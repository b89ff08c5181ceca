"""Issue 18 (cached input): a prompt whose prefix the engine had cached is billed at the cached
price for those tokens, end to end: the real CPU engine's prefix cache → the gateway (openai SDK)
→ the usage event and the spend counter → ``UsageRecord.cached_tokens`` → an invoice with a
separate cached-input line, in its PDF too. Every amount is computed by hand here."""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import openai
import pytest
from django.core.management import call_command
from django.utils import timezone
from pypdf import PdfReader

from berth.redis import names
from billing import pdf
from billing.models import Invoice, TokenKind, UsageRecord
from billing.periods import period_containing
from contract import invalidation
from contract.spend import period_id
from cpu_engine.backends import PAGE_SIZE
from cpu_engine.tests.engine_process import (
    API_KEY,
    EngineArgs,
    free_port,
    start_engine,
    stop_engine,
    wait_ready,
)
from models_registry import mirror
from models_registry.models import Price
from tests.gateway.conftest import make_key, make_tenant
from tests.gateway.test_usage import drain
from tests.registry.factories import ModelFactory

pytestmark = [pytest.mark.django_db, pytest.mark.engine, pytest.mark.processes]

INPUT, CACHED, OUTPUT = Decimal("3000"), Decimal("600"), Decimal("9000")  # per million tokens


@pytest.fixture(scope="module")
def cache_engine(tmp_path_factory):
    from cpu_engine.tiny_model import create_tiny_model

    root = tmp_path_factory.mktemp("cached-input")
    spec = EngineArgs(
        served_name=f"tiny-cache-{uuid.uuid4().hex[:6]}",
        source=str(create_tiny_model(root / "tiny")),
        task="chat",
        host="127.0.0.1",
        port=free_port(),
        api_key=API_KEY,
    )
    engine = start_engine(spec, root / "engine.log")
    try:
        wait_ready(engine)
        yield engine
    finally:
        stop_engine(engine)


def long_prompt() -> str:
    """Several cache blocks of text no earlier request sent."""
    words = " ".join(f"clause {i} of contract {uuid.uuid4().hex[:8]}" for i in range(40))
    return f"You are the assistant of one tenant. Confidential terms follow. {words}"


def request_cost_micros(prompt: int, cached: int, completion: int) -> int:
    """One request as the spend counter adds it, in micro-units: tokens × (price per million ×
    10^6 micro-units) / 10^6, rounded up; with these whole prices it is exact."""
    return int((prompt - cached) * INPUT + cached * CACHED + completion * OUTPUT)


def cents(tokens: int, unit: Decimal) -> Decimal:
    return (Decimal(tokens) * unit / 1_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_a_cached_prefix_is_billed_at_the_cached_price_on_the_invoice(
    gateway, cache_engine, redis_client, settings, time_machine
):
    name = cache_engine.spec.served_name
    model = ModelFactory(name=name)
    Price.objects.create(
        model=model, input_per_million=INPUT, output_per_million=OUTPUT, cached_input_per_million=CACHED
    )
    assert mirror.publish_model(model)  # the registry's mirror: the cached price travels with it
    assert redis_client.hget(names().model(name), "price_cached_input_micros") == "600000000"
    redis_client.hset(names().route(name), "w1", json.dumps({"url": cache_engine.url, "api_key": API_KEY}))
    redis_client.publish(names().invalidate_channel(), invalidation.model(name))

    tenant = make_tenant()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    system = long_prompt()

    def ask(question: str, **kwargs):
        # transformers registers a prompt's blocks only for a request still running after its
        # first token: two tokens at least.
        return client.chat.completions.create(
            model=name,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=3,
            extra_body={"ignore_eos": True},
            **kwargs,
        )

    first = ask("What is clause 3?")
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # present, and nothing cached yet
    second = ask("What is clause 3?")
    cached_plain = second.usage.prompt_tokens_details.cached_tokens
    assert cached_plain >= 3 * PAGE_SIZE  # the shared system prompt came from the prefix cache
    assert cached_plain < second.usage.prompt_tokens  # whole blocks only: never the whole prompt

    chunks = list(ask("And clause 7?", stream=True, stream_options={"include_usage": True}))
    streamed = chunks[-1].usage
    assert streamed.prompt_tokens_details.cached_tokens >= 3 * PAGE_SIZE

    drain()
    records = {r.request_id: r for r in UsageRecord.objects.filter(tenant=tenant)}
    assert len(records) == 3
    replies = [
        (first.usage, 0),
        (second.usage, cached_plain),
        (streamed, streamed.prompt_tokens_details.cached_tokens),
    ]
    assert sorted(
        (r.prompt_tokens, r.cached_tokens, r.completion_tokens) for r in records.values()
    ) == sorted((u.prompt_tokens, cached, u.completion_tokens) for u, cached in replies)

    # The gateway's spend counter priced the cached tokens at the cached price, request by request.
    counter = redis_client.get(names().spend_counter(str(tenant.id), period_id(settings.BILLING_PERIOD)))
    assert int(counter) == sum(
        request_cost_micros(u.prompt_tokens, c, u.completion_tokens) for u, c in replies
    )

    period = period_containing(timezone.now())
    time_machine.move_to(period.end + timedelta(hours=1), tick=False)
    call_command("close_billing_period")
    invoice = Invoice.objects.get(tenant=tenant)

    prompt = sum(u.prompt_tokens for u, _ in replies)
    cached = sum(c for _, c in replies)
    completion = sum(u.completion_tokens for u, _ in replies)
    expected = [
        (TokenKind.INPUT, prompt - cached, INPUT, cents(prompt - cached, INPUT)),
        (TokenKind.CACHED, cached, CACHED, cents(cached, CACHED)),
        (TokenKind.OUTPUT, completion, OUTPUT, cents(completion, OUTPUT)),
    ]
    got = [(line.kind, line.tokens, line.unit_price_per_million, line.amount) for line in invoice.lines.all()]
    assert got == expected
    assert invoice.total == sum(amount for *_, amount in expected)
    # Billed as if nothing were cached, the same usage would have cost more.
    assert invoice.total < cents(prompt, INPUT) + cents(completion, OUTPUT)

    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.render(invoice))).pages)
    assert "cached input tokens" in text.lower()
    assert f"{cached:,}" in text
