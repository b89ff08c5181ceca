"""The gateway's ``/metrics`` (engine addresses, tenants' models and traffic) is private.

With DEBUG off it answers only with ``Authorization: Bearer $BERTH_INTERNAL_TOKEN``, and a gateway
with DEBUG off and no token refuses to start.
"""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from django.conf import settings

from tests.gateway.conftest import ROOT, free_port, gateway_argv, gateway_env, start_gateway

pytestmark = pytest.mark.processes  # gateways in production mode

TOKEN = "internal-token-for-tests-0123456789abcdef"


@pytest.fixture(scope="module")
def production_gateway(_use_test_redis_db):
    proc = start_gateway(DEBUG="0", BERTH_INTERNAL_TOKEN=TOKEN)
    yield proc
    proc.stop()


def test_metrics_refuse_without_the_internal_token(production_gateway):
    url = production_gateway.url + "/metrics"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_token"
    assert "berth_gateway" not in missing.text
    wrong = httpx.get(url, headers={"authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403 and "berth_gateway" not in wrong.text
    assert httpx.get(url, headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
    allowed = httpx.get(url, headers={"authorization": f"Bearer {TOKEN}"})
    assert allowed.status_code == 200 and "berth_gateway_requests_total" in allowed.text
    assert httpx.get(production_gateway.url + "/healthz").status_code == 200  # probes stay open


def _start(**extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **gateway_env(**extra)}
    for name in {"BERTH_INTERNAL_TOKEN", "BERTH_INTERNAL_TOKEN_FILE", "DEBUG"} - set(extra):
        env.pop(name, None)
    argv = gateway_argv(free_port())  # python -m gateway, as deployments start it
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: S603


@pytest.mark.parametrize(
    "extra",
    [
        {"DEBUG": "0"},
        {"DATABASE_URL": "postgresql://berth@db.example/berth"},  # DEBUG is off by default there
        {"DEBUG": "0", "BERTH_INTERNAL_TOKEN": "short"},  # as the control plane: ≥ 32 characters
    ],
    ids=["debug-off", "production-database", "weak-token"],
)
def test_it_refuses_to_start_with_debug_off_and_no_strong_token(_use_test_redis_db, extra):
    result = _start(**extra)
    assert result.returncode == 2  # the entry point refuses before uvicorn starts
    assert "cannot start" in result.stderr and "BERTH_INTERNAL_TOKEN" in result.stderr
    # The refusal does not print the environment (peppers are secrets).
    for secret in settings.KEY_PEPPERS.values():
        assert secret not in result.stderr + result.stdout
