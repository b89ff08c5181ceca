"""Prefix-cache isolation: the gateway sends each tenant's own ``cache_salt`` to the engine."""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes, start_gateway
from tests.gateway.recording_engine import RecordingEngine

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def recorder():
    engine = RecordingEngine()
    yield engine
    engine.stop()


def _model(redis_client, recorder, task="chat") -> str:
    model = register_model(redis_client, [], task=task)
    set_routes(redis_client, model, [recorder])
    return model


def _salt_of(gateway_url: str, recorder, tenant, model: str, **extra) -> str | None:
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=make_key(tenant), max_retries=0)
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "same prefix"}], **extra
    )
    return recorder.bodies[-1].get("cache_salt")


def test_each_tenant_gets_its_own_salt_and_never_its_raw_id(gateway, redis_client, recorder):
    model = _model(redis_client, recorder)
    a, b = make_tenant(), make_tenant()
    salt_a = _salt_of(gateway.url, recorder, a, model)
    salt_b = _salt_of(gateway.url, recorder, b, model)
    assert salt_a and salt_b and salt_a != salt_b
    assert str(a.pk) not in salt_a and str(b.pk) not in salt_b
    # Stable per tenant, whichever key it uses.
    assert _salt_of(gateway.url, recorder, a, model) == salt_a


def test_a_client_sent_salt_is_replaced(gateway, redis_client, recorder):
    model = _model(redis_client, recorder)
    victim, attacker = make_tenant(), make_tenant()
    victim_salt = _salt_of(gateway.url, recorder, victim, model)
    # The attacker tries to share the victim's cache by sending its salt (or any chosen value).
    sent = _salt_of(gateway.url, recorder, attacker, model, extra_body={"cache_salt": victim_salt})
    assert sent != victim_salt
    assert sent == _salt_of(gateway.url, recorder, attacker, model, extra_body={"cache_salt": "mine"})


def test_completions_are_salted_and_embeddings_untouched(gateway, redis_client, recorder):
    tenant = make_tenant()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=make_key(tenant), max_retries=0)
    chat_salt = _salt_of(gateway.url, recorder, tenant, _model(redis_client, recorder))
    client.completions.create(model=_model(redis_client, recorder, task="completion"), prompt="same prefix")
    assert recorder.bodies[-1]["cache_salt"] == chat_salt
    # Embeddings have no prefix cache to share (and vLLM's embedding request has no such field).
    embedder = _model(redis_client, recorder, task="embedding")
    recorder.scripted.append(
        (
            200,
            b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1]}],'
            b'"model":"m","usage":{"prompt_tokens":2,"total_tokens":2}}',
            "application/json",
        )
    )
    client.embeddings.create(model=embedder, input="same prefix")
    assert "cache_salt" not in recorder.bodies[-1]


@pytest.mark.processes  # starts its own gateway
def test_the_operator_can_let_a_group_of_tenants_share(redis_client, recorder):
    a, b, outsider = make_tenant(), make_tenant(), make_tenant()
    shared = start_gateway(BERTH_GATEWAY_CACHE_SALT_GROUPS=f"{a.pk}=research, {b.pk}=research")
    try:
        model = _model(redis_client, recorder)
        salt_a = _salt_of(shared.url, recorder, a, model)
        assert _salt_of(shared.url, recorder, b, model) == salt_a
        assert _salt_of(shared.url, recorder, outsider, model) != salt_a
    finally:
        shared.stop()
