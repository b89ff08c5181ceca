"""The app's wiring, in process: one ``Engine`` on ``app.state``, the routes of its task only, and
the key check on ``/v1`` alone."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cpu_engine.app import create_app
from cpu_engine.engine import Engine

KEY = "engine-key"


class IdleBackend:
    model_path = "/models/tiny"
    max_model_len = 512
    running = waiting = 0

    def is_alive(self):
        return True

    def kv_cache_usage(self):
        return 0.0


def call(task: str, method: str, path: str, *, key: str | None = KEY) -> httpx.Response:
    app = create_app(task=task, backend=IdleBackend(), served_name="tiny", api_key=KEY)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def send():
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
            return await client.request(method, path, json={}, headers=headers)

    return asyncio.run(send())


def test_the_app_holds_one_engine_for_its_routes():
    app = create_app(task="chat", backend=IdleBackend(), served_name="tiny", api_key=None)
    engine = app.state.engine
    assert isinstance(engine, Engine)
    assert (engine.task, engine.served_name) == ("chat", "tiny")
    assert engine.metrics.labels == {"model_name": "tiny", "engine": "0"}


@pytest.mark.parametrize(
    ("task", "served", "absent"),
    [
        ("chat", ["/v1/chat/completions", "/v1/completions"], "/v1/embeddings"),
        ("completion", ["/v1/chat/completions", "/v1/completions"], "/v1/embeddings"),
        ("embedding", ["/v1/embeddings"], "/v1/chat/completions"),
    ],
)
def test_it_serves_the_routes_of_its_task_only(task, served, absent):
    for path in served:
        assert call(task, "POST", path).status_code == 400  # routed: the empty body is refused
    r = call(task, "POST", absent)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_only_v1_needs_the_key():
    assert call("chat", "GET", "/v1/models", key=None).status_code == 401
    assert call("chat", "GET", "/v1/models").json()["data"][0]["id"] == "tiny"
    assert call("chat", "GET", "/health", key=None).status_code == 200
    assert call("chat", "GET", "/metrics", key=None).status_code == 200


def test_a_wrong_method_is_an_openai_shaped_405():
    r = call("chat", "GET", "/v1/chat/completions")
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_it_refuses_an_unknown_task():
    with pytest.raises(ValueError, match="unknown task"):
        create_app(task="rerank", backend=IdleBackend(), served_name="tiny", api_key=None)
