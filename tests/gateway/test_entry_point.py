"""``python -m gateway`` is a program of its own: it never imports Django, start-up included.

A ``sitecustomize`` put on the gateway's ``PYTHONPATH`` (in this test only) installs an import
hook before anything else runs and writes down every ``django`` module the process asks for; the
gateway then starts, serves a real request through the whole path (auth, routing, the engine,
metering) and stops. The hook is proven on a process that does import Django.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.gateway.conftest import (
    ROOT,
    Proc,
    free_port,
    gateway_argv,
    gateway_env,
    make_key,
    make_tenant,
    register_model,
)

pytestmark = [pytest.mark.django_db, pytest.mark.processes]  # every test runs python -m gateway

HOOK = '''
import os
import sys

_LOG = os.environ["BERTH_IMPORT_LOG"]


class _DjangoWatch:
    """Writes down every django module this process tries to import (then lets it proceed)."""

    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django."):
            with open(_LOG, "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        return None


sys.meta_path.insert(0, _DjangoWatch())
'''


@pytest.fixture
def watched_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "django-imports.log"
    path = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "BERTH_IMPORT_LOG": str(log)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env, log


def test_the_import_hook_sees_a_django_import(watched_env):
    env, log = watched_env
    subprocess.run([sys.executable, "-c", "import django.conf"], env=env, cwd=ROOT, check=True, timeout=60)  # noqa: S603
    assert "django.conf" in log.read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_python_m_gateway_serves_requests_without_importing_django(
    watched_env, engines, redis_client, workers
):
    env, log = watched_env
    model = register_model(redis_client, engines)
    key = make_key(make_tenant())
    port = free_port()
    proc = Proc(
        gateway_argv(port, "--workers", str(workers)),
        {**env, **gateway_env()},
        f"http://127.0.0.1:{port}",
        "/healthz",
    )
    try:
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0, timeout=30)
        assert model in {m.id for m in client.models.list()}
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=3
        )
        assert reply.usage.completion_tokens == 3
        chunks = list(
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
            )
        )
        assert sum(1 for c in chunks if c.choices) == 4
    finally:
        proc.stop(signal.SIGTERM)
    assert proc.process.returncode in (0, -signal.SIGTERM)
    assert not log.exists(), f"the gateway imported Django: {log.read_text()}"


def test_python_m_gateway_help_needs_no_settings(watched_env):
    env, log = watched_env
    env = {k: v for k, v in env.items() if k not in ("BERTH_KEY_PEPPERS", "REDIS_URL")}
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway", "--help"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--grace-seconds" in result.stdout
    assert not log.exists()


def test_it_refuses_to_start_without_peppers_and_says_why(watched_env):
    env, _ = watched_env
    env = {k: v for k, v in env.items() if not k.startswith("BERTH_KEY_PEPPERS")}
    result = subprocess.run(  # noqa: S603
        gateway_argv(free_port()), env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "BERTH_KEY_PEPPERS" in result.stderr
