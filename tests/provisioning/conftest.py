"""Fixtures for provisioning tests: stubbed engine/agent seams, and real node agents."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from provisioning import dispatch, probe

ROOT = Path(__file__).resolve().parents[2]


class Seams:
    """Records what the control plane sent and lets a test say how engines answer."""

    def __init__(self):
        self.sent: list[tuple[str, str, str]] = []
        self.healthy: set[str] = set()
        self.loads: dict[str, float] = {}

    def send(self, task_name, worker_id, queue):
        self.sent.append((task_name.rsplit(".", 1)[-1], str(worker_id), queue))

    def health(self, url, **kwargs):
        return url in self.healthy

    def load(self, url, **kwargs):
        return probe.Load(running=self.loads.get(url, 0.0), waiting=0.0)


@pytest.fixture
def seams(monkeypatch):
    stub = Seams()
    monkeypatch.setattr(dispatch, "send", stub.send)
    monkeypatch.setattr(dispatch, "reconcile_soon", lambda: stub.sent.append(("reconcile", "", "celery")))
    monkeypatch.setattr(probe, "health", stub.health)
    monkeypatch.setattr(probe, "load", stub.load)
    return stub


# --------------------------------------------------------------------------- real processes


def _test_database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgresql://{auth}{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture
def broker(settings):
    """Send Celery messages to the test Redis database (the one flushed before each test).

    The test process never sends to the developer's broker: the URL is switched before first use
    and kept for the session (closing kombu's pools mid-session breaks its producer cache).
    """
    from berth.celery import app

    if app.conf.broker_url != settings.REDIS_URL:
        app.conf.broker_url = settings.REDIS_URL
        app._pool = None
        app.amqp._producer_pool = None
    return app


class Agents:
    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *, cpu_slots: int = 2, extra_env: dict | None = None) -> subprocess.Popen:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "berth.settings",
            "DATABASE_URL": _test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.REDIS_URL,
            "DEBUG": "1",
            "BERTH_DATA_DIR": str(self.tmp_path / "data"),
            "BERTH_ENGINE_LAUNCHER_OVERRIDE": "tests.provisioning.fake_engine.build_launch",
            "BERTH_HEARTBEAT_SECONDS": "1",
            "BERTH_ENGINE_STOP_GRACE": "5",
            "PYTHONUNBUFFERED": "1",
        }
        env = {**env, **(extra_env or {})}
        log = open(self.tmp_path / f"agent-{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "manage.py", "node_agent", "--name", name, "--cpu-slots", str(cpu_slots)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def wait_consuming(self, name: str, timeout: float = 60) -> None:
        """Until the agent's Celery worker is up (it logs 'ready.')."""
        log = self.tmp_path / f"agent-{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and "ready." in log.read_text(errors="replace"):
                return
            if self.processes[name].poll() is not None:
                raise AssertionError(f"agent {name} exited:\n{self.log(name)}")
            time.sleep(0.2)
        raise AssertionError(f"agent {name} not ready in {timeout}s:\n{self.log(name)}")

    def log(self, name: str) -> str:
        path = self.tmp_path / f"agent-{name}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        process = self.processes[name]
        os.kill(process.pid, sig)  # the agent only: its engines must die with it by themselves
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def agents(tmp_path, broker):
    pool = Agents(tmp_path)
    yield pool
    pool.stop_all()


def wait_for(predicate, *, timeout: float = 60, interval: float = 0.3, step=None, what: str = "condition"):
    """Poll ``predicate`` (running ``step`` first each time) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def reconcile(django_capture_on_commit_callbacks):
    """One reconcile pass with its on-commit callbacks run (tests run inside a transaction)."""
    from provisioning import reconciler

    def run(**kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return reconciler.reconcile(**kwargs)

    return run


@pytest.fixture(autouse=True)
def _ensure_default_plan(request):
    """Transactional tests flush the data-migrated plans; tenant factories need the free plan."""
    if request.node.get_closest_marker("django_db"):
        from tenants.models import Plan

        request.getfixturevalue("db" if not _transactional(request) else "transactional_db")
        Plan.objects.get_or_create(slug="free", defaults={"name": "Free", "is_default": True})


def _transactional(request) -> bool:
    marker = request.node.get_closest_marker("django_db")
    return bool(marker and marker.kwargs.get("transaction"))
