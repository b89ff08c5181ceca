"""``manage.py up`` on a fresh data dir: embedded servers, all processes, /healthz, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from django.conf import settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(url: str, process: subprocess.Popen, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "manage.py up exited early; see up.log"
        try:
            status, body = get_json(url)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


def still_running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def up_process(tmp_path):
    web, gateway = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(
        BERTH_DATA_DIR=str(tmp_path / "var"),
        BERTH_ADMIN_EMAIL="ops@example.test",
        PYTHONUNBUFFERED="1",
    )
    log = open(tmp_path / "up.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "manage.py", "up", "--web-port", str(web), "--gateway-port", str(gateway)],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield process, web, gateway, tmp_path, log
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


def test_up_runs_everything_on_embedded_servers_and_ctrl_c_leaves_nothing(up_process):
    process, web, gateway, tmp_path, log = up_process
    body = wait_for(f"http://127.0.0.1:{web}/healthz", process)
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["embedded"] == {"database": True, "redis": True}
    assert wait_for(f"http://127.0.0.1:{gateway}/healthz", process)["status"] == "ok"
    # Celery worker and beat are up too.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log.seek(0)
        output = log.read()
        if "ready." in output and "beat: Starting" in output:
            break
        time.sleep(0.3)
    assert "control@" in output and "beat: Starting" in output
    assert "created staff user ops@example.test with password:" in output

    data_dir = str(tmp_path / "var")
    descendants = psutil.Process(process.pid).children(recursive=True)
    servers = [p for p in psutil.process_iter(["cmdline"]) if data_dir in " ".join(p.info["cmdline"] or [])]
    assert any("postgres" in " ".join(p.info["cmdline"]) for p in servers)
    assert (
        any("redis-server" in " ".join(p.info["cmdline"]) for p in servers)
        or (tmp_path / "var/redis/redis.pid").exists()
    )
    redis_pid = int((tmp_path / "var" / "redis" / "redis.pid").read_text())

    process.send_signal(signal.SIGINT)  # what Ctrl-C delivers
    assert process.wait(timeout=60) == 0
    log.seek(0)
    assert "bye" in log.read()
    deadline = time.monotonic() + 10
    while (
        alive := [p for p in [*descendants, *servers] if still_running(p)]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == []
    assert not psutil.pid_exists(redis_pid)


# --------------------------------------------------------------------------- supervision


def test_a_crash_looping_child_is_restarted_with_backoff_and_never_stops_the_others(tmp_path):
    """Before: five crashes in 120 s stopped every process, the gateway included."""
    import io

    from berth.management.commands.up import Child, Supervisor

    sup = Supervisor(io.StringIO(), colour=False)
    sup.backoff_first, sup.backoff_max = 0.05, 0.4
    steady = Child("gateway", [sys.executable, "-c", "import time; time.sleep(60)"])
    crasher = Child("usage", [sys.executable, "-c", "import sys; sys.exit(3)"])
    sup.add(steady)
    sup.add(crasher)
    steady_pid = steady.process.pid
    try:
        deadline = time.monotonic() + 30
        while crasher.restarts < 8 and time.monotonic() < deadline:
            sup.watch_once()
            time.sleep(0.02)
        assert crasher.restarts >= 8  # more than the five that used to stop everything
        assert not sup.stopping.is_set() and sup.failed is None
        assert steady.process.pid == steady_pid and steady.process.poll() is None
        assert crasher.crashes >= 8 and sup.backoff(crasher.crashes) == 0.4  # capped
        assert "restarting it in" in sup.out.getvalue()
    finally:
        sup.stop_all()
    assert steady.process.poll() is not None


def test_a_child_that_ran_long_enough_starts_its_backoff_over(tmp_path):
    import io

    from berth.management.commands.up import Child, Supervisor

    sup = Supervisor(io.StringIO(), colour=False)
    sup.backoff_first, sup.stable_after = 0.05, 0.3
    child = Child("usage", [sys.executable, "-c", "import time; time.sleep(0.5)"])
    child.crashes = 6  # a bad streak long ago
    sup.add(child)
    try:
        child.process.wait(timeout=10)
        sup.watch_once()
        assert child.crashes == 1 and child.restart_at is not None
        assert child.restart_at - time.monotonic() <= 0.05
    finally:
        sup.stop_all()


def test_up_runs_every_long_running_role_and_only_those():
    from berth import roles
    from berth.management.commands.up import Command

    names = Command.roles_to_run({"no_agent": False})
    assert set(names) == {r.name for r in roles.ROLES if r.long_running} == set(roles.NAMES) - {"migrate"}
    assert "agent" not in Command.roles_to_run({"no_agent": True})
