"""The markers keep process-starting tests out of ``make test-fast``, and none can slip in.

tests/conftest.py marks tests from their fixtures and folders and fails an unmarked test that
starts a server; these tests check both halves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_MARKERS, PROCESS_MARKERS, TESTS, _ProcessGuard, markers_for, server_in

ROOT = TESTS.parent
FAST = "not processes and not engine and not browser and not docker and not slow"


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "uvicorn", "gateway.app:app", "--port", "8001"],
        [sys.executable, "-m", "gateway", "--port", "8001"],
        [sys.executable, "-m", "cpu_engine", "--model", "tiny"],
        [sys.executable, "manage.py", "node_agent", "--name", "n1"],
        [sys.executable, "manage.py", "up"],
        [sys.executable, "-m", "celery", "-A", "berth", "worker"],
        [sys.executable, "bench/chaos.py", "--short"],
        ["/bin/sh", "/repo/docker/entrypoint.sh", "web"],
        ["/usr/lib/pgserver/bin/pg_ctl", "-D", "data", "start"],
        ["/usr/bin/redis-server", "redis.conf"],
        ["/usr/bin/chromium", "--headless"],
        ["docker-compose", "config"],
    ],
)
def test_servers_and_outside_tools_are_recognised(argv):
    assert server_in(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-c", "import gateway.app"],
        [sys.executable, "manage.py", "check"],
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        ["/repo/.venv/bin/ruff", "check", "."],
        [sys.executable, "-m", "mypy"],
        ["git", "status"],
    ],
)
def test_short_commands_are_not_servers(argv):
    assert server_in(argv) is None


def test_fixtures_and_folders_give_markers():
    gateway_test = TESTS / "tenants" / "test_x.py"
    assert markers_for(fixturenames=["db", "gateway"], path=gateway_test) == {"processes"}
    assert markers_for(fixturenames=["chat_engine"], path=gateway_test) == {"engine", "processes"}
    assert markers_for(fixturenames=["db"], path=TESTS / "browser" / "test_x.py") == {"browser"}
    assert markers_for(fixturenames=["db"], path=TESTS / "docker" / "test_x.py") == {"docker"}
    assert markers_for(fixturenames=["db", "client"], path=gateway_test) == set()


def test_the_guard_names_a_server_started_by_an_unmarked_test():
    guard = _ProcessGuard()
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    guard(process, [sys.executable, "-m", "uvicorn", "gateway.app:app"])
    assert "python -m uvicorn" in guard.complaint()


def test_the_guard_names_a_process_left_running():
    guard = _ProcessGuard()
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        guard(process, [sys.executable, "-c", "import time; time.sleep(30)"])
        assert "still running" in guard.complaint()
    finally:
        process.kill()
        process.wait()
    assert guard.complaint() is None  # a short command that ended is fine


@pytest.mark.slow  # collects the whole suite in a subprocess
def test_no_test_using_a_process_fixture_is_left_in_the_fast_run(tmp_path):
    report = tmp_path / "fixtures.json"
    result = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            FAST,
            "-p",
            "tests.support.collected_fixtures",
        ],
        cwd=ROOT,
        env={**os.environ, "BERTH_COLLECTED_FIXTURES": str(report)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fixtures = json.loads(report.read_text())
    assert len(fixtures) > 100  # the fast run is most of the suite
    marked = {name for name, markers in FIXTURE_MARKERS.items() if set(markers) & set(PROCESS_MARKERS)}
    escaped = {test: sorted(marked & set(names)) for test, names in fixtures.items() if marked & set(names)}
    assert escaped == {}
    folders = {Path(test.split("::")[0]).parts[1] for test in fixtures}
    assert not folders & {"browser", "docker", "bench"}
