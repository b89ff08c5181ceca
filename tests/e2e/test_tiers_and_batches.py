"""Issues 15 and 16 end to end, on the real stack: a CPU engine worker started from the node
agent's launch description, ``python -m gateway`` forwarding ``/v1/files`` and ``/v1/batches`` to
the control plane (Django's live server), the usage consumer writing into PostgreSQL, and the
invoice of the period.

* ``service_tier="flex"`` is echoed by the answer (plain and streamed), recorded on the usage
  record, and invoiced at the flex percent of the model's price;
* a batch submitted with the ``openai`` SDK runs (the worker's validation and runner), its output
  file downloads through the SDK line by line, and the invoice bills its lines at the batch price.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import openai
import pytest
from django.utils import timezone

from batches import runner
from batches.models import BatchStatus
from billing.invoicing import close_period
from billing.models import UsageRecord
from billing.periods import period_containing
from models_registry.models import Deployment
from tests.e2e.conftest import CHAT
from tests.gateway.conftest import make_key, make_tenant, set_routes, start_gateway
from tests.gateway.test_usage import drain
from tests.registry.factories import priced_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.engine, pytest.mark.processes]

TOKEN = "e2e-internal-token-" + "x" * 32
INPUT, OUTPUT = Decimal("2.00"), Decimal("8.00")
PERCENT = {"default": Decimal(100), "flex": Decimal(50), "priority": Decimal(200), "batch": Decimal(50)}
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def stack_gateway(live_server, _use_test_redis_db):
    proc = start_gateway(BERTH_GATEWAY_CONTROL_PLANE_URL=live_server.url, BERTH_INTERNAL_TOKEN=TOKEN)
    yield proc
    proc.stop()


@pytest.fixture
def stack(stack_gateway, e2e_workers, redis_client, settings):
    """The chat model priced and routed to the CPU worker; a tenant on a standard plan with a key.
    The control plane (this process's live server and the runner) shares the gateway's token."""
    settings.INTERNAL_TOKEN = TOKEN
    settings.GATEWAY_INTERNAL_URL = stack_gateway.url
    model = priced_model(CHAT, INPUT, OUTPUT, task="chat")
    Deployment.objects.create(model=model, engine="cpu", max_loras=2)
    set_routes(redis_client, CHAT, [e2e_workers["chat"]])
    tenant = make_tenant()
    return tenant, openai.OpenAI(base_url=stack_gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)


def invoice_lines(tenant) -> dict[tuple[str, str], tuple[int, Decimal, Decimal]]:
    period = period_containing(timezone.now())
    invoice = close_period(tenant=tenant, period=period, now=period.end + timedelta(hours=1)).invoice
    return {
        (line.service_tier, line.kind): (line.tokens, line.unit_price_per_million, line.amount)
        for line in invoice.lines.all()
    }


def expected_lines(records) -> dict[tuple[str, str], tuple[int, Decimal, Decimal]]:
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        tokens[(r.service_tier, "input")] += r.prompt_tokens - r.cached_tokens
        tokens[(r.service_tier, "output")] += r.completion_tokens
    out = {}
    for (tier, kind), count in tokens.items():
        unit = (INPUT if kind == "input" else OUTPUT) * PERCENT[tier] / 100
        amount = (Decimal(count) * unit / 1_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        out[(tier, kind)] = (count, unit, amount)
    return out


def test_flex_is_echoed_recorded_and_invoiced_at_the_flex_price(stack):
    tenant, client = stack
    flex = client.chat.completions.create(
        model=CHAT, messages=HELLO, max_tokens=6, temperature=0, service_tier="flex"
    )
    assert flex.service_tier == "flex"
    plain = client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=6, temperature=0)
    assert plain.service_tier == "default"  # a standard plan's "auto"
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=6,
            temperature=0,
            service_tier="flex",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.service_tier for c in chunks} == {"flex"}
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == flex.choices[0].message.content
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2, service_tier="priority")
    assert refused.value.code == "service_tier_not_allowed"

    drain()
    records = [r for r in UsageRecord.objects.filter(tenant=tenant) if r.http_status == 200]
    assert sorted(r.service_tier for r in records) == ["default", "flex", "flex"]
    flex_records = [r for r in records if r.service_tier == "flex"]
    assert {(r.prompt_tokens, r.completion_tokens) for r in flex_records} == {
        (flex.usage.prompt_tokens, flex.usage.completion_tokens)
    }
    lines = invoice_lines(tenant)
    assert lines == expected_lines(records)
    assert lines[("flex", "output")][1] == OUTPUT / 2  # the flex unit price: half the model's


def test_a_batch_from_the_sdk_runs_downloads_and_is_invoiced_at_the_batch_price(stack, monkeypatch):
    tenant, client = stack
    from batches import submission

    sent = []
    monkeypatch.setattr(submission.celery_app, "send_task", lambda name, args=None, **kw: sent.append(args))
    prompts = ["Say hello", "Count to three", "Name a colour", "Say goodbye", "Spell cat"]
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": CHAT,
                "messages": [{"role": "user", "content": p}],
                "max_tokens": 5,
                "temperature": 0,
            },
        }
        for i, p in enumerate(prompts)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    uploaded = client.files.create(file=("questions.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert sent == [[batch.id]]
    # What the Celery worker does with the task: validate, then run the lines through the gateway.
    assert runner.validate(batch.id) == BatchStatus.IN_PROGRESS
    assert runner.run(batch.id) == BatchStatus.COMPLETED

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    output = [json.loads(row) for row in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"q{i}" for i in range(5)]
    for i, row in enumerate(output):
        answer = client.chat.completions.create(
            model=CHAT, messages=lines[i]["body"]["messages"], max_tokens=5, temperature=0
        )
        body = row["response"]["body"]
        assert row["response"]["status_code"] == 200 and row["error"] is None
        assert (
            body["choices"][0]["message"]["content"] == answer.choices[0].message.content
        )  # greedy: same text
        assert body["service_tier"] == "batch"

    drain()
    records = list(UsageRecord.objects.filter(tenant=tenant, http_status=200))
    batch_records = [r for r in records if r.service_tier == "batch"]
    assert len(batch_records) == 5 and {r.batch_id for r in batch_records} == {batch.id}
    assert sorted(r.completion_tokens for r in batch_records) == sorted(
        o["response"]["body"]["usage"]["completion_tokens"] for o in output
    )
    lines_billed = invoice_lines(tenant)
    assert lines_billed == expected_lines(records)
    assert lines_billed[("batch", "output")][1] == OUTPUT / 2  # the batch unit price: half the model's
