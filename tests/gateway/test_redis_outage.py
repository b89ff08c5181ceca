"""Redis outages at the gateway: refused requests get a clear 503, and a request the engine already
answered waits for Redis to come back instead of losing its usage event."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.conf import settings

from billing.models import UsageRecord
from tests.billing.tcp_proxy import TcpProxy
from tests.gateway.conftest import make_key, make_tenant, register_model, start_gateway
from tests.gateway.test_usage import drain

pytestmark = pytest.mark.django_db


def _redis_behind(proxy: TcpProxy) -> str:
    db = settings.REDIS_URL.rsplit("/", 1)[1]
    return f"redis://127.0.0.1:{proxy.port}/{db}"


def _redis_address() -> tuple[str, int]:
    host_port = settings.REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return host or "127.0.0.1", int(port)


def test_a_request_while_redis_is_down_gets_a_503_with_retry_after(engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, engines)
    proxy = TcpProxy(*_redis_address())
    gateway = start_gateway(REDIS_URL=_redis_behind(proxy))
    try:
        proxy.cut()
        answer = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "service_unavailable"
    finally:
        gateway.stop()
        proxy.cut()


def test_a_stream_that_ends_while_redis_restarts_is_still_billed(engines, redis_client):
    key = make_key(make_tenant())
    model = register_model(redis_client, engines[:1])
    proxy = TcpProxy(*_redis_address())
    gateway = start_gateway(REDIS_URL=_redis_behind(proxy))
    try:
        with httpx.Client(timeout=60) as client:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "count slowly"}],
                "max_tokens": 40,
                "stream": True,
                "fake_delay": 0.05,  # a 2-second stream
            }
            with client.stream(
                "POST",
                gateway.url + "/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
            ) as response:
                request_id = response.headers["x-request-id"]
                lines = response.iter_lines()
                next(lines)
                proxy.cut()  # Redis goes away mid-stream and is back 3 s later, after the stream ended
                threading.Timer(3.0, proxy.restore).start()
                chunks = sum(1 for line in lines if line.startswith("data: {"))
        assert chunks >= 39
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not UsageRecord.objects.filter(request_id=request_id).exists():
            drain()
            time.sleep(0.2)
        record = UsageRecord.objects.get(request_id=request_id)
        assert (record.status, record.completion_tokens) == ("ok", 40)
    finally:
        gateway.stop()
        proxy.cut()
