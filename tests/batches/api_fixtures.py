"""Fixtures of the Files and Batch API tests: the real gateway forwarding to Django's live server.

The ``openai`` SDK talks to a gateway process (``python -m gateway``) whose control plane URL is
the live server (a thread of this process, on the test database), both sharing one internal
token; tenants and keys are published to the test Redis as for inference.
"""

from __future__ import annotations

import openai
import pytest

from tests.gateway.conftest import make_key, make_tenant, start_gateway

TOKEN = "files-api-internal-token-" + "x" * 24


@pytest.fixture(scope="module")
def _files_gateway_process(live_server, _use_test_redis_db):
    proc = start_gateway(BERTH_GATEWAY_CONTROL_PLANE_URL=live_server.url, BERTH_INTERNAL_TOKEN=TOKEN)
    yield proc
    proc.stop()


@pytest.fixture
def files_gateway(_files_gateway_process, live_server, settings):
    settings.INTERNAL_TOKEN = TOKEN  # the live server runs in this process: it reads these settings
    return _files_gateway_process


@pytest.fixture
def sent_tasks(monkeypatch):
    """The Celery tasks sent by name (recorded instead of reaching a broker)."""
    sent: list[tuple[str, list]] = []
    from batches import submission

    monkeypatch.setattr(
        submission.celery_app,
        "send_task",
        lambda name, args=None, **kw: sent.append((name, list(args or []))),
    )
    return sent


class Caller:
    def __init__(self, gateway_url: str, redis_client):
        self.tenant = make_tenant()
        self.key = make_key(self.tenant)
        self.client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=self.key, max_retries=0)


@pytest.fixture
def caller(files_gateway, redis_client):
    return Caller(files_gateway.url, redis_client)


@pytest.fixture
def other(files_gateway, redis_client):
    return Caller(files_gateway.url, redis_client)
