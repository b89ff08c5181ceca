"""Issue 19 end to end: the Responses API and Anthropic's Messages through the real stack, tool
calls from the CPU engine, rerank and score on the shipped embedding model — each metered from
what the engine reported, recorded in PostgreSQL and invoiced at the model's price.

The clients are the real ``openai`` and ``anthropic`` SDKs; the gateway is ``python -m gateway``;
the workers are ``python -m cpu_engine`` started from the node agent's launch description.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone

from billing.invoicing import close_period
from billing.models import UsageRecord
from billing.periods import period_containing
from models_registry.models import Deployment
from tests.e2e.conftest import CHAT, EMBED
from tests.gateway.conftest import make_key, make_tenant, set_routes
from tests.gateway.test_usage import drain
from tests.registry.factories import priced_model

pytestmark = [pytest.mark.django_db, pytest.mark.engine, pytest.mark.processes]

GREEDY = {"temperature": 0}  # this anthropic SDK no longer takes it as an argument
PRICES = {CHAT: (Decimal("3.00"), Decimal("15.00")), EMBED: (Decimal("0.10"), Decimal("0"))}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
def stack(e2e_gateway, e2e_workers, redis_client, django_capture_on_commit_callbacks):
    """The registry's rows for both workers, mirrored and routed; a tenant with a key."""
    for name, task in ((CHAT, "chat"), (EMBED, "embedding")):
        with django_capture_on_commit_callbacks(execute=True):
            model = priced_model(name, *PRICES[name], task=task)
            Deployment.objects.create(model=model, engine="cpu", max_loras=2 if task == "chat" else 0)
        worker = e2e_workers["chat" if task == "chat" else "embedding"]
        set_routes(redis_client, name, [worker])
    tenant = make_tenant()
    key = make_key(tenant)
    return tenant, key


def test_responses_messages_and_tools_are_served_metered_and_invoiced(stack, e2e_gateway):
    tenant, key = stack
    oai = openai.OpenAI(base_url=e2e_gateway.url + "/v1", api_key=key, max_retries=0)
    claude = anthropic.Anthropic(base_url=e2e_gateway.url, api_key=key, max_retries=0)
    reported: list[tuple[str, int, int]] = []  # (endpoint, prompt, completion) as the engine said

    response = oai.responses.create(model=CHAT, input="Say hello", max_output_tokens=8, temperature=0)
    assert response.status == "incomplete"  # OpenAI's status when max_output_tokens cut it short
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text
    assert response.usage.output_tokens == 8
    reported.append(("responses", response.usage.input_tokens, response.usage.output_tokens))

    events = list(
        oai.responses.create(model=CHAT, input="Say hello", max_output_tokens=8, temperature=0, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == response.output_text  # greedy: the same text both ways
    done = events[-1].response
    reported.append(("responses", done.usage.input_tokens, done.usage.output_tokens))

    message = claude.messages.create(
        model=CHAT, max_tokens=6, messages=[{"role": "user", "content": "Say hello"}], extra_body=GREEDY
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens == 6 and message.stop_reason == "max_tokens"
    reported.append(("messages", message.usage.input_tokens, message.usage.output_tokens))

    with claude.messages.stream(
        model=CHAT, max_tokens=6, messages=[{"role": "user", "content": "Say hello"}], extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == message.content[0].text
    reported.append(("messages", final.usage.input_tokens, final.usage.output_tokens))

    called = oai.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Weather in Paris for 3 days?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=50,
    )
    [call] = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    reported.append(("chat", called.usage.prompt_tokens, called.usage.completion_tokens))

    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER],
            tool_choice="auto",
            max_tokens=5,
        )
    assert caught.value.status_code == 400
    assert "required" in caught.value.message  # it says which choices work
    assert caught.value.param == "tool_choice"

    drain()
    records = UsageRecord.objects.filter(tenant=tenant).order_by("occurred_at")
    got = sorted((r.endpoint, r.prompt_tokens, r.completion_tokens) for r in records if r.http_status == 200)
    assert got == sorted(reported)
    assert all(r.usage_source == "engine" for r in records if r.http_status == 200)
    [refused] = [r for r in records if r.http_status != 200]
    assert (refused.http_status, refused.completion_tokens) == (400, 0)
    assert {r.model for r in records} == {CHAT}
    assert_invoiced(tenant, records)


def test_rerank_and_score_on_the_embedding_worker_are_metered(stack, e2e_gateway):
    tenant, key = stack
    headers = {"Authorization": f"Bearer {key}"}
    documents = [
        "Bananas are a yellow fruit.",
        "Paris is the capital of France.",
        "The stock market fell on Tuesday.",
    ]
    rerank = httpx.post(
        e2e_gateway.url + "/v1/rerank",
        json={"model": EMBED, "query": "What is the capital of France?", "documents": documents},
        headers=headers,
        timeout=60,
    )
    assert rerank.status_code == 200, rerank.text
    body = rerank.json()
    assert body["results"][0]["index"] == 1
    score = httpx.post(
        e2e_gateway.url + "/v1/score",
        json={
            "model": EMBED,
            "text_1": "A man is eating food.",
            "text_2": ["A man eats bread.", "Stocks fell."],
        },
        headers=headers,
        timeout=60,
    )
    assert score.status_code == 200, score.text
    scored = score.json()
    assert scored["data"][0]["score"] > scored["data"][1]["score"]
    reported = sorted(
        [("rerank", body["usage"]["prompt_tokens"], 0), ("score", scored["usage"]["prompt_tokens"], 0)]
    )

    drain()
    records = UsageRecord.objects.filter(tenant=tenant)
    assert sorted((r.endpoint, r.prompt_tokens, r.completion_tokens) for r in records) == reported
    assert {r.model for r in records} == {EMBED}
    assert_invoiced(tenant, records)


def assert_invoiced(tenant, records) -> None:
    """The invoice of the period has one line per (model, kind), tokens × price to the cent."""
    period = period_containing(timezone.now())
    invoice = close_period(tenant=tenant, period=period, now=period.end + timedelta(hours=1)).invoice
    tokens: dict[tuple[str, str], int] = defaultdict(int)
    for r in records:
        tokens[(r.model, "input")] += r.prompt_tokens
        tokens[(r.model, "output")] += r.completion_tokens
    expected = {}
    for (model, kind), count in tokens.items():
        unit = PRICES[model][0 if kind == "input" else 1]
        if count and unit:
            amount = (Decimal(count) * unit / 1_000_000).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
            expected[(model, kind)] = (count, amount)
    got = {(line.model, line.kind): (line.tokens, line.amount) for line in invoice.lines.all()}
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in expected.items()}
    assert got == expected
