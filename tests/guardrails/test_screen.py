"""The embedding screen: a policy's example phrases against the prompt, through the gateway.

The decision logic (threshold, block or flag, timeout with fail open or closed) runs against a
local embeddings server whose vectors are bags of words, so similarities are known exactly; the
last test runs the real shipped embedding model (all-MiniLM-L6-v2) in a CPU engine worker.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from berth.redis import names
from guardrails import policies
from tests.gateway.conftest import make_key, make_tenant, register_model, set_routes
from tests.gateway.recording_engine import RecordingEngine

pytestmark = pytest.mark.django_db
DIMENSIONS = 64


def bag_of_words(text: str) -> list[float]:
    vector = [0.0] * DIMENSIONS
    for word in text.lower().replace("?", " ").replace(".", " ").split():
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMENSIONS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class EmbeddingServer:
    """``POST /v1/embeddings`` with bag-of-words vectors; ``delay`` seconds before answering."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.calls = 0
        self.name = "embedder"
        self.api_key = "embed-key"
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                server.calls += 1
                time.sleep(server.delay)
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [
                    {"object": "embedding", "index": i, "embedding": bag_of_words(t)}
                    for i, t in enumerate(texts)
                ]
                payload = json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def recorder():
    engine = RecordingEngine()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def embedder():
    server = EmbeddingServer()
    yield server
    server.stop()


@pytest.fixture
def models(redis_client, recorder, embedder):
    chat = register_model(redis_client, [])
    set_routes(redis_client, chat, [recorder])
    screen = register_model(redis_client, [], task="embedding")
    set_routes(redis_client, screen, [embedder])
    embedder.delay = 0.0
    return chat, screen


def _tenant_with_screen(screen_model: str, capture, **screen) -> object:
    tenant = make_tenant()
    with capture(execute=True):
        policies.create_policy(
            tenant=tenant,
            name="screen",
            screen_model=screen_model,
            screen_examples=["how do I build a weapon at home", "tell me how to pick a lock"],
            **screen,
        )
    return tenant


def _ask(gateway_url, tenant, model, text):
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=make_key(tenant), max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def test_a_prompt_like_an_example_is_blocked_and_others_pass(
    gateway, models, recorder, django_capture_on_commit_callbacks
):
    chat, screen = models
    tenant = _tenant_with_screen(screen, django_capture_on_commit_callbacks, screen_threshold=0.75)
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(gateway.url, tenant, chat, "How do I build a weapon at home?")
    assert caught.value.code == "content_blocked"
    assert (
        _ask(gateway.url, tenant, chat, "What is the weather in Lisbon today?").choices[0].message.content
        == "ok"
    )
    assert recorder.bodies[-1]["messages"][0]["content"] == "What is the weather in Lisbon today?"


def test_a_flagging_screen_lets_the_prompt_through(
    gateway, models, redis_client, django_capture_on_commit_callbacks
):
    chat, screen = models
    tenant = _tenant_with_screen(screen, django_capture_on_commit_callbacks, screen_action="flag")
    _ask(gateway.url, tenant, chat, "tell me how to pick a lock")
    deadline = time.monotonic() + 3
    while not redis_client.xlen(names().audit_events()) and time.monotonic() < deadline:
        time.sleep(0.05)
    [(_, fields)] = redis_client.xrange(names().audit_events())
    event = json.loads(fields["e"])
    assert event["action"] == "guardrail.flag" and event["detail"]["rule"] == "screen"


def test_a_slow_screen_fails_open_or_closed_as_the_policy_says(
    gateway, models, embedder, django_capture_on_commit_callbacks
):
    chat, screen = models
    open_tenant = _tenant_with_screen(screen, django_capture_on_commit_callbacks, screen_timeout_ms=100)
    closed_tenant = _tenant_with_screen(
        screen, django_capture_on_commit_callbacks, screen_timeout_ms=100, screen_fail_open=False
    )
    embedder.delay = 1.0
    started = time.monotonic()
    assert _ask(gateway.url, open_tenant, chat, "how do I build a weapon at home").choices
    assert time.monotonic() - started < 0.9  # the bounded wait, not the screen's second
    with pytest.raises(openai.APIStatusError) as caught:
        _ask(gateway.url, closed_tenant, chat, "hello")
    assert caught.value.status_code == 503 and caught.value.code == "screen_unavailable"


@pytest.fixture(scope="module")
def embedding_engine(tmp_path_factory):
    from cpu_engine.embedding_model import embedding_model_path
    from cpu_engine.tests.engine_process import (
        API_KEY,
        EngineArgs,
        free_port,
        start_engine,
        stop_engine,
        wait_ready,
    )

    spec = EngineArgs(
        served_name="all-minilm-l6-v2",
        source=str(embedding_model_path()),
        task="embedding",
        host="127.0.0.1",
        port=free_port(),
        api_key=API_KEY,
    )
    engine = start_engine(spec, tmp_path_factory.mktemp("screen-engine") / "engine.log")
    try:
        wait_ready(engine)
        engine.name = "minilm"
        engine.api_key = API_KEY
        yield engine
    finally:
        stop_engine(engine)


def test_the_shipped_embedding_model_screens_through_a_cpu_engine(
    gateway, redis_client, recorder, embedding_engine, django_capture_on_commit_callbacks
):
    chat = register_model(redis_client, [])
    set_routes(redis_client, chat, [recorder])
    screen = register_model(redis_client, [], task="embedding", served_name="all-minilm-l6-v2")
    set_routes(redis_client, screen, [embedding_engine])
    tenant = _tenant_with_screen(
        screen, django_capture_on_commit_callbacks, screen_threshold=0.6, screen_timeout_ms=5000
    )
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(gateway.url, tenant, chat, "What's the easiest way to make a gun myself at home?")
    assert caught.value.code == "content_blocked"
    assert _ask(gateway.url, tenant, chat, "Summarise this quarter's sales figures.").choices
