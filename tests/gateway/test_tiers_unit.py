"""Service tiers at the gateway on their own: resolution, prices, and the byte splices."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from contract import spend
from gateway import tiers
from gateway.errors import GatewayError
from gateway.sse import rewrite
from gateway.validation import validate


def data(obj: object, sep: str = ":") -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", sep)).encode() + b"\n\n"


def events(out: bytes) -> list[dict]:
    """The JSON of every ``data:`` line (typed events have an ``event:`` line first)."""
    return [json.loads(line[5:]) for line in out.split(b"\n") if line.startswith(b"data:")]


# ---------------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("requested", "band", "served"),
    [
        (None, "standard", "default"),
        ("auto", "best_effort", "flex"),
        ("auto", "priority", "priority"),
        (None, None, "default"),  # a plan mirrored before bands existed reads as standard
        ("flex", "priority", "flex"),
        ("default", "standard", "default"),
        ("priority", "priority", "priority"),
    ],
)
def test_a_request_is_served_in_its_tier_within_the_plan(requested, band, served):
    assert tiers.serve(requested, {"band": band}) == served


@pytest.mark.parametrize(
    ("requested", "band", "allowed"),
    [("priority", "standard", "auto, default, flex"), ("default", "best_effort", "auto, flex")],
)
def test_a_tier_above_the_plan_is_a_400_naming_what_it_allows(requested, band, allowed):
    with pytest.raises(GatewayError) as refused:
        tiers.serve(requested, {"band": band})
    assert refused.value.status == 400
    assert refused.value.code == "service_tier_not_allowed"
    assert refused.value.param == "service_tier"
    assert refused.value.message.endswith(f"Use one of: {allowed}.")


def test_batch_lines_are_served_in_the_batch_tier():
    assert tiers.serve("priority", {"band": "priority"}, batch=True) == "batch"


def test_validation_reads_openai_and_anthropic_tiers():
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert validate({**chat, "service_tier": "flex"}, "chat", max_tokens_limit=10).service_tier == "flex"
    assert validate(chat, "chat", max_tokens_limit=10).service_tier is None
    embed = {"model": "m", "input": "x", "service_tier": "auto"}
    assert validate(embed, "embeddings", max_tokens_limit=10).service_tier == "auto"
    messages = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    for asked, meant in (("auto", "auto"), ("standard_only", "default")):
        checked = validate({**messages, "service_tier": asked}, "messages", max_tokens_limit=10)
        assert checked.service_tier == meant
    with pytest.raises(GatewayError) as bad:
        validate({**messages, "service_tier": "flex"}, "messages", max_tokens_limit=10)
    assert bad.value.param == "service_tier"
    assert "'auto', 'standard_only'" in bad.value.message


@pytest.mark.parametrize(
    ("value", "code"), [(3, "invalid_type"), (["flex"], "invalid_type"), ("scale", "invalid_value")]
)
def test_validation_refuses_a_bad_tier(value, code):
    body = {"model": "m", "prompt": "x", "service_tier": value}
    with pytest.raises(GatewayError) as bad:
        validate(body, "completions", max_tokens_limit=10)
    assert (bad.value.status, bad.value.param, bad.value.code) == (400, "service_tier", code)


# ---------------------------------------------------------------------------------- prices


@dataclass
class Info:
    price_input_micros: int = 0
    price_output_micros: int = 0
    price_cached_input_micros: int | None = None
    price_percents: dict = field(default_factory=dict)


def test_prices_carry_the_tiers_percent_which_the_settlement_applies_once():
    info = Info(3_000_000, 15_000_001, None)
    assert tiers.prices(info, "default") == {
        "price_input_micros": 3_000_000,
        "price_output_micros": 15_000_001,
        "price_cached_input_micros": None,
        "price_percent": 10_000,
    }
    assert tiers.prices(info, "flex")["price_percent"] == 5_000  # contract.tiers' default: 50 %
    assert tiers.prices(info, "priority")["price_percent"] == 20_000
    assert tiers.prices(info, "batch")["price_percent"] == 5_000
    mirrored = Info(1_000_000, 0, 100_000, price_percents={"price_percent_flex": "62.5"})
    assert tiers.prices(mirrored, "flex")["price_percent"] == 6_250
    assert tiers.prices(mirrored, "priority")["price_percent"] == 20_000  # not mirrored: the default
    # The spend counter's cost of a request in flex is the flex share of the full one, rounded up once.
    full = spend.cost_micros(1000, 2000, 3_000_000, 15_000_001)
    half = spend.cost_micros(
        1000, 2000, 3_000_000, 15_000_001, percent=tiers.prices(info, "flex")["price_percent"]
    )
    assert half == -(-full // 2)


@pytest.mark.parametrize("value", [None, "", "abc", "-5", "NaN", "Infinity"])
def test_a_malformed_mirrored_percent_reads_as_the_default(value):
    assert tiers.percent(Info(price_percents={"price_percent_flex": value}), "flex") == 5_000


# ---------------------------------------------------------------------------------- splices


FLEX = tiers.field("flex", "chat")


def test_a_json_answer_gets_the_tier_inserted_or_replaced():
    answer = {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"message": {"content": 'say "service_tier":x'}}],
    }
    spliced = json.loads(tiers.splice_answer(json.dumps(answer).encode(), FLEX, "chat"))
    assert spliced == {**answer, "service_tier": "flex"}
    for engine_value in ("null", '"auto"', '"default"'):
        raw = f'{{"id": "r", "service_tier": {engine_value}, "output": []}}'.encode()
        assert json.loads(tiers.splice_answer(raw, FLEX, "responses")) == {
            "id": "r",
            "service_tier": "flex",
            "output": [],
        }


def test_rerank_and_score_answers_pass_as_they_are():
    raw = b'{"results":[],"usage":{"total_tokens":3}}'
    assert tiers.splice_answer(raw, FLEX, "rerank") is raw
    assert tiers.splice_answer(raw, FLEX, "score") is raw


def test_a_messages_answer_gets_it_in_usage_in_anthropics_words():
    raw = json.dumps(
        {"id": "msg", "type": "message", "usage": {"input_tokens": 3, "output_tokens": 1}}
    ).encode()
    for tier, echo in (
        ("flex", "standard"),
        ("default", "standard"),
        ("priority", "priority"),
        ("batch", "batch"),
    ):
        spliced = json.loads(tiers.splice_answer(raw, tiers.field(tier, "messages"), "messages"))
        assert spliced["usage"] == {"service_tier": echo, "input_tokens": 3, "output_tokens": 1}
        assert "service_tier" not in spliced


def test_every_chunk_of_a_stream_gets_the_tier():
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "a"}}],
    }
    stream = data(chunk) + data(chunk, ": ") + data({"id": "c", "choices": [], "usage": {"prompt_tokens": 1}})
    part = rewrite(stream + b"data: [DONE]\n\n", client_usage=True, client_continuous=False)
    out = tiers.splice_chunks(part.out, FLEX)
    assert [e["service_tier"] for e in events(out)] == ["flex", "flex", "flex"]
    assert out.endswith(b"\n\n")


def test_a_streams_own_tier_values_are_replaced_and_missing_ones_added():
    stream = data({"id": "c", "service_tier": None}) + data({"id": "c"}) + b": keep-alive\n\n"
    out = tiers.splice_chunks(stream, FLEX)
    assert events(out) == [{"id": "c", "service_tier": "flex"}, {"service_tier": "flex", "id": "c"}]
    assert out.endswith(b": keep-alive\n\n")
    assert tiers.splice_chunks(b"data: {}\n\n", FLEX) == b'data: {"service_tier":"flex"}\n\n'


def test_responses_and_messages_events_carry_the_tier_where_their_apis_do():
    created = {"type": "response.created", "response": {"id": "r", "service_tier": "auto", "status": "x"}}
    delta = {"type": "response.output_text.delta", "delta": "hi"}
    raw = b"event: response.created\n" + data(created) + b"event: response.output_text.delta\n" + data(delta)
    out = tiers.splice_typed(raw, FLEX, "responses")
    assert [e.get("response", {}).get("service_tier") for e in events(out)] == ["flex", None]
    no_tier = {"type": "response.completed", "response": {"id": "r", "usage": {}}}
    assert (
        events(tiers.splice_typed(data(no_tier), FLEX, "responses"))[0]["response"]["service_tier"] == "flex"
    )
    start = {
        "type": "message_start",
        "message": {"id": "m", "usage": {"input_tokens": 2, "output_tokens": 0}},
    }
    out = tiers.splice_typed(data(start), tiers.field("priority", "messages"), "messages")
    assert events(out)[0]["message"]["usage"]["service_tier"] == "priority"


def test_the_engine_body_gets_the_priority_without_reencoding():
    raw = b'{"model":"m","input":"x y"}'
    assert json.loads(tiers.with_priority(raw, 2)) == {"priority": 2, "model": "m", "input": "x y"}
    assert tiers.with_priority(b' {"model":"m"}', 0) == b' {"priority":0,"model":"m"}'
