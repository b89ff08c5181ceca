"""Random bodies at Responses, Messages, count_tokens, rerank, score and a stored response's
paths: never a 5xx, and every 4xx in the shape of its path (OpenAI's, or Anthropic's on the
Messages paths). The strategies are ``test_fuzz``'s."""

from __future__ import annotations

import os

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import make_key, make_tenant, register_model, start_gateway
from tests.gateway.test_fuzz import _dumps, json_scalar, json_value

pytestmark = pytest.mark.django_db

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
VALID = {
    "/v1/responses": {"input": "hello", "max_output_tokens": 4, "instructions": "be brief"},
    "/v1/messages": {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "system": "x"},
    "/v1/messages/count_tokens": {"messages": [{"role": "user", "content": "hello"}]},
    "/v1/rerank": {"query": "hello", "documents": ["a", "b"], "top_n": 1},
    "/v1/score": {"text_1": "hello", "text_2": ["a", "b"]},
}
PATHS = [*VALID, "/v1/responses/resp_unknown", "/v1/responses/resp_unknown/cancel"]
FIELDS = sorted({name for body in VALID.values() for name in body} | {"model", "stream", "tools", "tool_choice",
                 "previous_response_id", "background", "store", "queries", "items"})  # fmt: skip


@st.composite
def requests(draw, model: str):
    path = draw(st.sampled_from(PATHS))
    body = {"model": model, **VALID.get(path, {}), "stream": draw(st.booleans())}
    family = draw(st.integers(0, 3))
    if family == 0:
        return path, draw(st.binary(max_size=100) | json_value.map(_dumps))
    if family == 1:
        body = draw(st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=6))
        body.setdefault("model", model)
    else:
        for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2)):
            if family == 2:
                body[name] = draw(json_scalar | json_value)
            else:
                body.pop(name, None)
    return path, _dumps(body)


@pytest.fixture(scope="module")
def fuzz_gateway(_use_test_redis_db, engines):
    proc = start_gateway(BERTH_GATEWAY_MAX_TOKENS_LIMIT="16")
    yield proc
    proc.stop()


def test_random_bodies_at_the_new_surfaces_never_get_a_5xx(fuzz_gateway, engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, engines)
    client = httpx.Client(base_url=fuzz_gateway.url, timeout=30)
    headers = {"x-api-key": key, "content-type": "application/json"}
    seen: dict[int, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize="FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(model))
    @example(("/v1/messages", _dumps({"model": model, "messages": [{"role": "user", "content": 5}]})))
    @example(("/v1/rerank", _dumps({"model": model, "query": {"content": "x"}, "documents": ["a"]})))
    @example(("/v1/score", _dumps({"model": model, "queries": "a", "items": ["b"]})))
    def check(request):
        path, body = request
        method = "GET" if path == "/v1/responses/resp_unknown" else "POST"
        response = client.request(method, path, content=body, headers=headers)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (path, body, response.text[:500])
        if response.status_code >= 400:
            data = response.json()
            if path.startswith("/v1/messages"):
                assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
            else:
                assert set(data["error"]) == {"message", "type", "param", "code"}

    try:
        check()
    finally:
        client.close()
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0 and seen.get(404, 0) > 0, seen
