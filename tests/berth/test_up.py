"""``berth up`` on a fresh data dir: embedded servers, all processes, /healthz, a short status, one log
file per role, clean Ctrl-C; and the supervisor's restarts, logs and status display on their own."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest


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
        assert process.poll() is None, "berth up exited early; see up.log"
        try:
            status, body = get_json(url)
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


def read(path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_output(log, pattern: str, process: subprocess.Popen, timeout: float = 90) -> str:
    """up's terminal output once a line matches ``pattern`` (a regular expression)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "berth up exited early; see up.log"
        log.seek(0)
        output = log.read()
        if re.search(pattern, output, re.MULTILINE):
            return output
        time.sleep(0.3)
    raise AssertionError(f"no line matching {pattern!r} on up's terminal within {timeout}s:\n{output}")


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
    # The installed ``berth`` script, from a directory that is not the checkout (as after pip install).
    berth = str(Path(sys.executable).parent / "berth")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    process = subprocess.Popen(
        [sys.executable, berth, "up", "--web-port", str(web), "--gateway-port", str(gateway)],
        cwd=tmp_path,
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
    # Celery worker and beat are up too; their output (banners included) is in their log files.
    logs = tmp_path / "var" / "logs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        worker_log, beat_log = read(logs / "worker.log"), read(logs / "beat.log")
        if "ready." in worker_log and "beat: Starting" in beat_log:
            break
        time.sleep(0.3)
    assert "control@" in worker_log and "beat: Starting" in beat_log
    # Every role writes its own file; the embedded servers' logs are linked next to them.
    from berth.management.commands.up import Command

    for role in Command.roles_to_run({"no_agent": False}):
        assert "--- " in read(logs / f"{role}.log") and " started (pid " in read(logs / f"{role}.log")
    assert "Uvicorn running on" in read(logs / "web.log")
    assert (logs / "postgres.log").resolve() == (tmp_path / "var/postgres/postgres.log").resolve()
    assert (logs / "postgres.log").exists()

    # The terminal has the short status: where, each role's state, the models' readiness.
    output = wait_for_output(log, r"^  tiny-chat ", process)
    assert "created staff user ops@example.test with password:" in output
    assert f"Gateway (OpenAI base_url): http://127.0.0.1:{gateway}/v1" in output
    for role in ("web", "gateway", "usage", "worker", "beat", "agent"):
        assert re.search(rf"^  {role} +running \(pid \d+\)$", output, re.MULTILINE), role
    assert re.search(
        r"^  tiny-chat +(waiting for a worker|loading|ready) \(\d/1 workers", output, re.MULTILINE
    )
    assert f"each role's output: {logs}/<role>.log" in output
    # ... and none of the roles' own output: no Celery banner, no uvicorn lines.
    for noise in ("control@", "[tasks]", "celery@", "beat: Starting", "Uvicorn running on", "INFO"):
        assert noise not in output
    # Model readiness follows the agent: the tiny chat model becomes ready.
    wait_for_output(log, r"^  tiny-chat +ready \(1/1 workers\)$", process, timeout=240)
    assert "node local registered" in read(logs / "agent.log")

    data_dir = str(tmp_path / "var")
    descendants = psutil.Process(process.pid).children(recursive=True)
    # The gateway reads no Django settings: up hands it what only Django resolved (embedded Redis).
    (gateway_process,) = [
        p for p in psutil.Process(process.pid).children() if "gateway" in " ".join(p.cmdline())
    ]
    gateway_env = gateway_process.environ()
    from berth import embedded

    assert gateway_env["REDIS_URL"] == embedded.configured_urls(tmp_path / "var")[1]
    assert gateway_env["BERTH_KEY_PEPPERS"].startswith("dev:")
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
    output = log.read()
    assert "every process stopped; bye" in output
    assert re.search(r"^  worker +stopped$", output, re.MULTILINE)
    assert "stopped (code" in read(logs / "worker.log").splitlines()[-1]
    deadline = time.monotonic() + 10
    while (
        alive := [p for p in [*descendants, *servers] if still_running(p)]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == []
    assert not psutil.pid_exists(redis_pid)


@pytest.mark.processes  # the embedded PostgreSQL and Redis, then a hang-up
def test_a_closed_terminal_stops_the_embedded_servers_too(tmp_path):
    """Before: SIGHUP killed up at once; its children followed, the embedded Redis stayed up."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(BERTH_DATA_DIR=str(tmp_path / "var"), BERTH_ADMIN_PASSWORD="x" * 16, PYTHONUNBUFFERED="1")
    berth = str(Path(sys.executable).parent / "berth")
    with open(tmp_path / "up.log", "w+") as log:
        process = subprocess.Popen(
            [sys.executable, berth, "up", "--no-agent", "--web-port", str(free_port())],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_output(log, "^applying migrations", process)  # the embedded servers run
            redis_pid = int((tmp_path / "var" / "redis" / "redis.pid").read_text())
            process.send_signal(signal.SIGHUP)
            assert process.wait(timeout=120) == 0
            log.seek(0)
            assert "every process stopped; bye" in log.read()
            deadline = time.monotonic() + 10
            while psutil.pid_exists(redis_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not psutil.pid_exists(redis_pid)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            from berth import embedded  # whatever this test's up left running (none, when it passes)

            embedded.stop_postgres(tmp_path / "var")
            embedded.stop_redis(tmp_path / "var")


# --------------------------------------------------------------------------- supervision


@pytest.mark.processes
def test_a_crash_looping_child_is_restarted_with_backoff_and_never_stops_the_others(tmp_path):
    """Before: five crashes in 120 s stopped every process, the gateway included."""
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


# --------------------------------------------------------------------------- logs and status


def talker(name: str, lines: int = 3) -> list[str]:
    return [sys.executable, "-c", f"for i in range({lines}): print('hello from {name}', i)"]


def run_children(sup, *children) -> None:
    for child in children:
        sup.add(child)
    for child in children:
        child.process.wait(timeout=30)
    sup.stop_all()  # waits for the pumps' pipes to end
    sup.close()


def test_each_role_writes_its_own_log_file_and_the_terminal_stays_quiet(tmp_path):
    from berth.management.commands.up import Child, Supervisor

    out = io.StringIO()
    sup = Supervisor(out, colour=False, log_dir=tmp_path / "logs")
    run_children(sup, Child("gateway", talker("gateway")), Child("usage", talker("usage")))
    for name in ("gateway", "usage"):
        text = (tmp_path / "logs" / f"{name}.log").read_text()
        assert [line for line in text.splitlines() if line.startswith("hello")] == [
            f"hello from {name} {i}" for i in range(3)
        ]
        assert " started (pid " in text and "stopped (code 0)" in text
    assert "hello from" not in out.getvalue()
    assert re.search(r"^  gateway +stopped$", out.getvalue(), re.MULTILINE)
    # A second run appends to the same files.
    sup = Supervisor(io.StringIO(), colour=False, log_dir=tmp_path / "logs")
    run_children(sup, Child("gateway", talker("gateway", 1)))
    assert (tmp_path / "logs" / "gateway.log").read_text().count("hello from gateway 0") == 2


def test_verbose_interleaves_every_role_on_the_terminal_prefixed_with_its_name(tmp_path):
    from berth.management.commands.up import Child, Supervisor

    out = io.StringIO()
    sup = Supervisor(out, colour=False, log_dir=tmp_path / "logs", verbose=True)
    run_children(sup, Child("gateway", talker("gateway")), Child("usage", talker("usage")))
    lines = out.getvalue().splitlines()
    assert [line for line in lines if "hello from gateway" in line] == [
        f"gateway | hello from gateway {i}" for i in range(3)
    ]
    assert [line for line in lines if "hello from usage" in line] == [
        f"usage   | hello from usage {i}" for i in range(3)
    ]
    assert any(line.startswith("up      | started gateway (pid ") for line in lines)
    assert "hello from usage 2" in (tmp_path / "logs" / "usage.log").read_text()  # and still in the file


def test_a_crash_names_the_log_to_read_and_its_last_line(tmp_path):
    from berth.management.commands.up import Child, Supervisor

    out = io.StringIO()
    sup = Supervisor(out, colour=False, log_dir=tmp_path / "logs")
    crasher = Child(
        "usage", [sys.executable, "-c", "print('starting'); print('boom: no REDIS_URL'); exit(3)"]
    )
    sup.add(crasher)
    try:
        crasher.process.wait(timeout=30)
        crasher.pumps[0].join(timeout=10)  # its last lines are in the file
        sup.watch_once()
        message = out.getvalue()
        log_path = tmp_path / "logs" / "usage.log"
        assert re.search(
            rf"^usage exited with code 3 after \d+s; restarting it in 1s \(crash 1 in a row\); its log: {re.escape(str(log_path))}$",
            message,
            re.MULTILINE,
        )
        assert "    last line: boom: no REDIS_URL" in message
        assert sup.status_lines() == [
            ("usage", "  usage  restarting (backoff 1s, crash 1 in a row; exited with code 3)")
        ]
    finally:
        sup.stop_all()
        sup.close()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_status_is_redrawn_in_place():
    from berth.management.commands.up import Display

    term = FakeTerminal()
    display = Display(term, live=True)
    display.status([("web", "  web  starting"), ("gateway", "  gateway  starting")])
    display.status([("web", "  web  running"), ("gateway", "  gateway  starting")])
    assert (
        term.getvalue()
        == "  web  starting\n  gateway  starting\n\x1b[2F\x1b[J  web  running\n  gateway  starting\n"
    )
    mark = len(term.getvalue())
    display.status([("web", "  web  running"), ("gateway", "  gateway  starting")])
    assert len(term.getvalue()) == mark  # unchanged: nothing redrawn
    display.line("Berth is up.")  # an event scrolls above the block, which is drawn again below it
    assert term.getvalue()[mark:] == "\x1b[2F\x1b[JBerth is up.\n  web  running\n  gateway  starting\n"
    mark = len(term.getvalue())
    display.release()  # on stop: the last states stay, what follows prints under them
    display.line("bye")
    assert term.getvalue()[mark:] == "bye\n"


def test_elsewhere_each_status_line_is_printed_once_when_it_changes():
    from berth.management.commands.up import Display

    out = io.StringIO()
    display = Display(out, live=False)
    display.status([("web", "  web  starting"), ("m", "  tiny-chat  loading (0/1 workers ready)")])
    display.status([("web", "  web  starting"), ("m", "  tiny-chat  loading (0/1 workers ready)")])
    display.status([("web", "  web  running"), ("m", "  tiny-chat  ready (1/1 workers)")])
    assert out.getvalue().splitlines() == [
        "  web  starting",
        "  tiny-chat  loading (0/1 workers ready)",
        "  web  running",
        "  tiny-chat  ready (1/1 workers)",
    ]
    assert "\x1b" not in out.getvalue()


def test_a_model_readiness_reads_as_a_few_words():
    from berth.management.commands.up import ReplicaView, describe_model

    ready, starting = ReplicaView("ready"), ReplicaView("starting")
    assert describe_model(desired=3, replicas=[starting, ready, ready]) == "loading (2/3 workers ready)"
    assert describe_model(desired=2, replicas=[ready, ready]) == "ready (2/2 workers)"
    assert describe_model(desired=1, replicas=[]) == "waiting for a worker (0/1 workers ready)"
    assert describe_model(desired=0, replicas=[]) == "scaled to zero (starts on the first request)"
    assert (
        describe_model(
            desired=1, replicas=[ReplicaView("pending", pending_reason="no node has a free CPU slot")]
        )
        == "waiting for capacity (0/1 workers ready): no node has a free CPU slot"
    )
    failed = ReplicaView("failed", failure_reason="engine exited with code 1\nTraceback", log_path="/v/w.log")
    assert (
        describe_model(desired=1, replicas=[failed])
        == "failed (0/1 workers ready): engine exited with code 1; its log: /v/w.log"
    )
    # A replacement already starting after the failure: loading again.
    assert describe_model(desired=1, replicas=[starting, failed]) == "loading (0/1 workers ready)"


@pytest.mark.django_db
def test_the_status_reads_each_deployment_and_its_workers_from_postgresql():
    from datetime import timedelta

    from django.utils import timezone

    from berth.management.commands.up import model_status
    from provisioning.constants import WorkerState
    from provisioning.models import Worker
    from tests.registry.factories import DeploymentFactory

    now = timezone.now()
    chat = DeploymentFactory(model__name="chat-a", desired_replicas=3)
    embed = DeploymentFactory(model__name="embed-b", desired_replicas=1)
    for state in (WorkerState.READY, WorkerState.READY, WorkerState.STARTING, WorkerState.STOPPED):
        Worker.objects.create(deployment=chat, state=state)
    # A failure from before this run of up is history, not status.
    Worker.objects.create(
        deployment=embed, state=WorkerState.FAILED, failure_reason="old", finished_at=now - timedelta(days=1)
    )
    assert model_status(since=now) == [
        (f"model {chat.id}", "  chat-a   loading (2/3 workers ready)"),
        (f"model {embed.id}", "  embed-b  waiting for a worker (0/1 workers ready)"),
    ]
    Worker.objects.create(
        deployment=embed,
        state=WorkerState.FAILED,
        failure_reason="out of memory",
        finished_at=now,
        log_path="/l",
    )
    assert model_status(since=now)[1] == (
        f"model {embed.id}",
        "  embed-b  failed (0/1 workers ready): out of memory; its log: /l",
    )


def test_after_a_plain_pip_install_the_roles_run_through_the_berth_script(settings, tmp_path):
    from berth.management.commands.up import Command

    assert Command.manage_script() == str(settings.BASE_DIR / "manage.py")  # a checkout
    settings.BASE_DIR = tmp_path  # site-packages: no manage.py
    assert Command.manage_script() == str(Path(sys.executable).parent / "berth")
