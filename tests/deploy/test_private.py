"""Private by default: /internal/* refuses without the token unless the process started in DEBUG,
forwarded headers are believed only from configured proxies, and the ASGI web process keeps no
persistent database connections."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from berth import roles

pytestmark = pytest.mark.django_db

INTERNAL = ("/internal/metrics", "/internal/prometheus/engines")


@pytest.mark.parametrize("path", INTERNAL)
def test_internal_endpoints_refuse_without_a_token_outside_debug(client, settings, path):
    """Before: with no BERTH_INTERNAL_TOKEN they answered anyone."""
    settings.INTERNAL_TOKEN = None
    settings.INTERNAL_OPEN_WITHOUT_TOKEN = False
    assert client.get(path).status_code == 401
    assert client.get(path, HTTP_AUTHORIZATION="Bearer ").status_code == 401


@pytest.mark.parametrize("path", INTERNAL)
def test_internal_endpoints_answer_the_token(client, settings, path):
    settings.INTERNAL_TOKEN = "t" * 40
    settings.INTERNAL_OPEN_WITHOUT_TOKEN = False
    assert client.get(path, HTTP_AUTHORIZATION="Bearer " + "x" * 40).status_code == 401
    assert client.get(path, HTTP_AUTHORIZATION="Bearer " + "t" * 40).status_code == 200


def probe_settings(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "DEBUG", "DATABASE_CONN"))}
    base.update(
        DJANGO_SETTINGS_MODULE="berth.settings",
        DATABASE_URL=settings.DATABASE_URL,
        REDIS_URL=settings.REDIS_URL,
        BERTH_DATA_DIR=str(tmp_path),
        DEBUG="1",
        **env,
    )
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({'age': s.DATABASES['default']['CONN_MAX_AGE'], 'proxies': s.TRUSTED_PROXIES, "
        "'open': s.INTERNAL_OPEN_WITHOUT_TOKEN}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=settings.BASE_DIR,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.processes  # the web role under uvicorn
def test_the_asgi_web_role_keeps_no_persistent_connections(tmp_path):
    assert probe_settings(tmp_path, BERTH_ROLE="web")["age"] == 0
    assert probe_settings(tmp_path, BERTH_ROLE="web", DATABASE_CONN_MAX_AGE="600")["age"] == 0
    # Celery, the consumer and the agent keep theirs (they run one thread, for a long time).
    assert probe_settings(tmp_path, BERTH_ROLE="usage")["age"] == 60
    assert probe_settings(tmp_path, BERTH_ROLE="worker", DATABASE_CONN_MAX_AGE="30")["age"] == 30
    assert roles.env("web") == {"BERTH_ROLE": "web"}


def test_forwarded_headers_are_trusted_from_loopback_only_by_default(tmp_path):
    assert probe_settings(tmp_path)["proxies"] == ["127.0.0.1"]
    assert probe_settings(tmp_path, BERTH_TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.5")["proxies"] == [
        "10.0.0.0/8",
        "192.168.1.5",
    ]
    values = dict.fromkeys(
        ("python", "manage", "web_host", "web_port", "gateway_host", "gateway_port", "usage_metrics_port",
         "worker_concurrency", "beat_schedule", "node_name"), "x",
    )  # fmt: skip
    web = roles.argv("web", trusted_proxies="10.0.0.0/8", **values)
    assert web[web.index("--forwarded-allow-ips") + 1] == "10.0.0.0/8"
    assert "*" not in web


def test_debug_alone_may_serve_internal_endpoints_without_a_token(tmp_path):
    assert probe_settings(tmp_path)["open"] is True
