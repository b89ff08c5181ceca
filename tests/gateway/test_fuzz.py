"""Property: whatever body, headers, method and path a client sends, the gateway never answers 5xx,
and every 4xx is OpenAI's error shape.

Hypothesis builds requests from three families: arbitrary JSON (or bytes), bodies made of the
fields the gateway reads with arbitrary values, and valid bodies with one field broken. They go
to a real gateway process in front of the fake engines, with a valid key most of the time (so
requests get past authentication into validation, quotas and forwarding). The example count is
bounded (300, the same every run) so the suite stays fast; set ``FUZZ_EXAMPLES`` to hunt
with that many random examples.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import make_key, make_tenant, register_model, start_gateway

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/unknown",
    "/v1/chat/completions/x",
    "/",
    "/metrics",
    "/healthz",
]
METHODS = ["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
FIELDS = [
    "model",
    "messages",
    "prompt",
    "input",
    "n",
    "best_of",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "cache_salt",
    "temperature",
    "user",
    "tools",
    "encoding_format",
]
MAIN_FIELD = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}
# Headers that frame the HTTP message itself are the client library's business, not the fuzz's.
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te", "trailer"}

# h11 (the client) refuses values with surrounding whitespace; the gateway never sees those.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.strip)
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "boss"]) | json_value,
        "content": st.text(max_size=60)
        | st.lists(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["text", "image_url"]) | json_value}, optional={"text": json_value}
            ),
            max_size=3,
        )
        | json_value,
        "name": json_value,
    },
)


def _dumps(value) -> bytes:
    return json.dumps(value).encode()  # the standard library's: integers beyond 64 bits too


@st.composite
def bodies(draw, model: str, path: str):
    family = draw(st.sampled_from([0, 1, 2, 2, 3, 4]))
    if family == 0:  # anything at all
        return draw(st.binary(max_size=200) | json_value.map(_dumps))
    valid = {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "prompt": "hello",
        "input": "hello",
        "max_tokens": draw(st.integers(1, 16)),
        "stream": draw(st.booleans()),
    }
    if family == 1:  # the gateway's fields, arbitrary values
        body = draw(st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=8))
        body.setdefault("model", draw(st.sampled_from([model, "no-such-model"])))
    elif family == 2:  # a valid body with exactly one field broken, most often the prompt's
        body = dict(valid)
        name = draw(st.sampled_from([MAIN_FIELD.get(path, "model")] * len(FIELDS) + FIELDS))
        body[name] = draw(json_scalar | json_value)  # wrong scalars as often as wrong structures
    elif family == 3:  # a valid body with fields broken or removed
        body = dict(valid)
        for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
            if draw(st.booleans()):
                body.pop(name, None)
            else:
                body[name] = draw(json_value)
    else:  # plausible requests: message lists, prompt shapes, n, stream options
        body = dict(valid)
        body["messages"] = draw(st.lists(message, max_size=4))
        body["prompt"] = draw(
            st.text(max_size=30)
            | st.lists(st.text(max_size=10), max_size=3)
            | st.lists(st.integers(0, 50), max_size=4)
        )
        body["input"] = body["prompt"]
        body["n"] = draw(st.integers(-1, 4))
        body["stream_options"] = draw(
            st.none()
            | st.fixed_dictionaries(
                {}, optional={"include_usage": json_value, "continuous_usage_stats": st.booleans()}
            )
        )
    return _dumps(body)


@st.composite
def headers(draw, key: str, *, plausible: bool):
    """Random headers; ``plausible``: a valid key and a JSON content type, plus random others."""
    result = {}
    auth = 0 if plausible else draw(st.integers(0, 5))
    if auth <= 2:
        result["authorization"] = f"Bearer {key}"
    elif auth == 3:
        result["api-key"] = key
    elif auth == 4:
        result["authorization"] = draw(header_text)
    content_type = draw(
        st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
        if plausible
        else st.sampled_from(["application/json", "text/plain", None]) | header_text
    )
    if content_type is not None:
        result["content-type"] = content_type
    names = st.sampled_from(
        [
            "origin",
            "accept",
            "accept-encoding",
            "content-encoding",
            "x-request-id",
            "user-agent",
            "openai-organization",
        ]
    ) | st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")
    for name, value in draw(st.dictionaries(names, header_text, max_size=4)).items():
        if name not in FRAMING and name not in result:
            result[name] = value
    if "origin" in result and draw(st.booleans()):
        result["access-control-request-method"] = draw(st.sampled_from(["POST", "GET", "DELETE"]))
    return result


@st.composite
def requests(draw, key: str, model: str):
    """Mostly POSTs to the inference endpoints that pass authentication (where the work is), the
    rest anything: other methods and paths, missing or broken keys and content types."""
    if draw(st.integers(0, 9)) < 8:
        method, path = "POST", draw(st.sampled_from(PATHS[:3]))
        sent_headers = draw(headers(key, plausible=True))
    else:
        method, path = draw(st.sampled_from(METHODS)), draw(st.sampled_from(PATHS))
        sent_headers = draw(headers(key, plausible=False))
    return method, path, draw(bodies(model, path)), sent_headers


@pytest.fixture(scope="module")
def fuzz_gateway(_use_test_redis_db, engines):
    # max_tokens ≤ 16 keeps every accepted request quick on the fake engine.
    proc = start_gateway(
        BERTH_GATEWAY_MAX_TOKENS_LIMIT="16", BERTH_GATEWAY_CORS_ORIGINS="http://allowed.example"
    )
    yield proc
    proc.stop()


def test_random_requests_never_get_a_5xx(fuzz_gateway, engines, redis_client):
    tenant = make_tenant()
    key = make_key(tenant)
    model = register_model(redis_client, engines)
    client = httpx.Client(base_url=fuzz_gateway.url, timeout=30)
    seen: dict[int, int] = {}
    plain = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize="FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples every run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(key, model))
    # Defects found before (a 500 with a traceback each): always tried.
    @example(("POST", "/v1/chat/completions", _dumps({"model": model, "messages": 5}), plain))
    @example(("POST", "/v1/chat/completions", _dumps({"model": model, "messages": [None]}), plain))
    @example(("POST", "/v1/completions", _dumps({"model": model, "prompt": {"a": 1}}), plain))
    @example(("POST", "/v1/embeddings", _dumps({"model": model, "input": 1.5}), plain))
    def check(request):
        method, path, body, sent_headers = request
        response = client.request(method, path, content=body, headers=sent_headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, body, sent_headers, response.text[:500])
        if 400 <= response.status_code < 500 and method != "HEAD":
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert isinstance(error["message"], str) and error["message"]

    try:
        check()
    finally:
        client.close()
    # The fuzz reached the engines, not only the validator: some requests were served.
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen
