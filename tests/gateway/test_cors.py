"""CORS on the gateway: browsers on an allowed origin (the console's playground) may call /v1."""

from __future__ import annotations

import httpx
import pytest

from gateway.config import GatewaySettings
from tests.gateway.conftest import make_key, make_tenant, register_model, start_gateway

pytestmark = pytest.mark.django_db(transaction=True)

CONSOLE = "http://console.test:8000"


@pytest.fixture(scope="module")
def cors_gateway(_use_test_redis_db, engines):
    proc = start_gateway(BERTH_GATEWAY_CORS_ORIGINS=f"{CONSOLE}, http://other.test/")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def any_origin_gateway(_use_test_redis_db, engines):
    proc = start_gateway(BERTH_GATEWAY_CORS_ORIGINS="*")
    yield proc
    proc.stop()


def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_default_origins_are_the_consoles_own():
    settings = GatewaySettings(BERTH_KEY_PEPPERS="p1:secret")
    assert settings.cors_origin_list() == ["http://127.0.0.1:8000", "http://localhost:8000"]


def test_preflight_from_an_allowed_origin(cors_gateway):
    response = _preflight(cors_gateway.url, CONSOLE)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == CONSOLE
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "authorization, content-type"
    assert int(response.headers["access-control-max-age"]) > 0
    assert "Origin" in response.headers["vary"]
    # A trailing slash in the setting does not matter.
    assert _preflight(cors_gateway.url, "http://other.test").status_code == 204


def test_preflight_from_another_origin_is_refused(cors_gateway):
    response = _preflight(cors_gateway.url, "http://evil.test")
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert response.json()["error"]["code"] == "origin_not_allowed"


def test_actual_request_carries_the_cors_headers(cors_gateway, engines, redis_client):
    model = register_model(redis_client, engines)
    key = make_key(make_tenant())
    body = {"model": model, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 3}
    auth = {"Authorization": f"Bearer {key}"}
    response = httpx.post(
        cors_gateway.url + "/v1/chat/completions", json=body, headers={**auth, "Origin": CONSOLE}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == CONSOLE
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    assert response.headers["vary"] == "Origin"

    # Streaming responses get them too.
    with httpx.stream(
        "POST",
        cors_gateway.url + "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        headers={**auth, "Origin": CONSOLE},
    ) as streamed:
        assert streamed.headers["access-control-allow-origin"] == CONSOLE
        assert b"[DONE]" in streamed.read()

    # Errors (here a bad key) too, so the browser can read the message.
    refused = httpx.post(
        cors_gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Origin": CONSOLE, "Authorization": "x"},
    )
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == CONSOLE

    # Not allowed: no CORS headers (the browser blocks the read); server-side clients: none either.
    other = httpx.post(
        cors_gateway.url + "/v1/chat/completions", json=body, headers={**auth, "Origin": "http://evil.test"}
    )
    assert "access-control-allow-origin" not in other.headers
    plain = httpx.post(cors_gateway.url + "/v1/chat/completions", json=body, headers=auth)
    assert plain.status_code == 200
    assert "access-control-allow-origin" not in plain.headers


def test_wildcard_allows_any_origin(any_origin_gateway):
    response = _preflight(any_origin_gateway.url, "http://anywhere.test")
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://anywhere.test"
    health = httpx.get(any_origin_gateway.url + "/healthz", headers={"Origin": "http://anywhere.test"})
    assert health.headers["access-control-allow-origin"] == "http://anywhere.test"
