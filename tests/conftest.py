"""Shared fixtures: real PostgreSQL (pytest-django's test database) and a real Redis.

Both come from ``DATABASE_URL``/``REDIS_URL`` when set, else from the embedded servers. Tests use
Redis database ``REDIS_TEST_DB`` (15 by default), flushed before every test, so a developer's
data in database 0 is never touched.

Markers (registered in pyproject.toml) are given here from the fixtures a test uses and the folder
it lives in, so a new test that starts the gateway or an engine is marked without anyone
remembering to: ``make test-fast`` deselects them. A test that starts a server some other way
(``start_gateway()`` in its body, ``subprocess.Popen``) and carries none of the markers fails,
so no test can slip a process into the fast run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from django.conf import settings

from berth.redis import get_redis

# Under pytest-xdist (`pytest -n 2`) each worker gets a database of its own (gw1: 14), as
# pytest-django gives each its own PostgreSQL test database: one worker's flush must not empty
# the other's keys. Database 13 belongs to tests/deploy/test_topology.py, so at most two workers.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
REDIS_TEST_DB = int(os.environ.get("REDIS_TEST_DB", "15")) - int(_XDIST_WORKER.removeprefix("gw") or 0)

# Fixtures that start processes, wherever they are defined; a test depending on one (directly or
# through another fixture) gets the marker.
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    # tests/gateway/conftest.py: fake engines and the gateway under uvicorn
    "engines": ("processes",),
    "gateway": ("processes",),
    # tests/batches/conftest.py: a gateway that takes batch lines (the internal token set)
    "batch_gateway": ("processes",),
    # tests/provisioning/conftest.py: node agents (manage.py node_agent, a Celery worker each)
    "agents": ("processes",),
    # tests/engines/conftest.py, tests/provisioning/test_cpu_engine_agent.py: the CPU engine, the tiny model
    "tiny_model_path": ("engine",),
    "tiny_model_dir": ("engine",),
    "_engines": ("engine", "processes"),
    "chat_engine": ("engine", "processes"),
    "embedding_engine": ("engine", "processes"),
    # tests/browser/conftest.py: Chromium through Playwright, Django's live server thread
    "browser": ("browser",),
    "page": ("browser",),
    "live_server": ("processes",),
    # tests/e2e/conftest.py: the gateway and real CPU engine workers
    "e2e_gateway": ("processes",),
    "e2e_workers": ("engine", "processes"),
    # module fixtures: `manage.py up`, a Redis server of the test's own, a production gateway
    "up_process": ("processes",),
    "own_redis": ("processes",),
    "production_gateway": ("processes",),
    # tests/security/test_api_schema.py: schemathesis over the whole management API
    "api_schema": ("slow",),
}

# Folders whose every test needs the same outside program.
FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "browser": ("browser",),
    "docker": ("docker",),
    "bench": ("processes", "slow"),
}

# What the fast run leaves out; a test carrying none of these may not start a server.
PROCESS_MARKERS = ("processes", "engine", "browser", "docker")

TESTS = Path(__file__).resolve().parent


def markers_for(*, fixturenames: list[str], path: Path) -> set[str]:
    """The markers a test gets from its fixtures and its folder under tests/."""
    names: set[str] = set()
    for fixture in fixturenames:
        names.update(FIXTURE_MARKERS.get(fixture, ()))
    try:
        folder = path.relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        folder = ""
    names.update(FOLDER_MARKERS.get(folder, ()))
    return names


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        for name in sorted(markers_for(fixturenames=getattr(item, "fixturenames", []), path=item.path)):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)


# Programs that are servers or outside tools: starting one is what the markers are for.
_SERVER_PROGRAMS = {
    "chromium",
    "chrome",
    "headless_shell",
    "node",
    "docker",
    "docker-compose",
    "kubectl",
    "redis-server",
    "postgres",
    "pg_ctl",
}
_SERVER_MODULES = {"uvicorn", "celery", "gateway", "cpu_engine", "provisioning.engines.cpu_server", "berth"}
_SERVER_COMMANDS = {"up", "gateway", "node_agent", "consume_usage", "runserver", "celery", "embedded"}


def server_in(argv: list[str]) -> str | None:
    """The server or outside tool ``argv`` starts, if it is one; short commands give None."""
    words = [str(word) for word in argv]
    if not words:
        return None
    program = Path(words[0]).name
    if program in _SERVER_PROGRAMS or program.startswith("chrom"):
        return program
    if any(word.endswith("entrypoint.sh") for word in words[:3]):
        return "docker/entrypoint.sh"
    if program.startswith("python"):
        rest = words[1:]
        if len(rest) >= 2 and rest[0] == "-m" and rest[1] in _SERVER_MODULES:
            return f"python -m {rest[1]}"
        if rest and rest[0].endswith("manage.py") and len(rest) > 1 and rest[1] in _SERVER_COMMANDS:
            return f"manage.py {rest[1]}"
        if rest and rest[0].startswith("bench/"):
            return rest[0]
    return None


class _ProcessGuard:
    """Records the processes started while an unmarked test sets up and runs."""

    def __init__(self) -> None:
        self.started: list[tuple[subprocess.Popen, str | None, str]] = []

    def __call__(self, popen: subprocess.Popen, args) -> None:
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        self.started.append((popen, server_in(argv), " ".join(map(str, argv))[:200]))

    def complaint(self) -> str | None:
        for popen, server, command in self.started:
            if server is not None:
                return f"it starts {server} ({command})"
            if popen.poll() is None:
                return f"a process it started is still running ({command})"
        return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item) -> Iterator[None]:
    return (yield from _guarded(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item) -> Iterator[None]:
    return (yield from _guarded(item, "call"))


def _guarded(item, phase: str):
    if any(item.get_closest_marker(name) for name in PROCESS_MARKERS):
        return (yield)
    guard = _ProcessGuard()
    original = subprocess.Popen.__init__

    def recording_init(self, args, *rest, **kwargs):
        original(self, args, *rest, **kwargs)
        guard(self, args)

    subprocess.Popen.__init__ = recording_init  # type: ignore[method-assign]
    try:
        result = yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]
    complaint = guard.complaint()
    if complaint:
        pytest.fail(
            f"{item.nodeid} ({phase}): {complaint}, but it carries none of the markers "
            f"{', '.join(PROCESS_MARKERS)}: add the fixture to FIXTURE_MARKERS in tests/conftest.py "
            "or a pytestmark to the module",
            pytrace=False,
        )
    return result


def _test_redis_url(url: str) -> str:
    base = url.split("?", 1)[0]
    scheme, _, rest = base.partition("://")
    host = rest.split("/", 1)[0]
    return f"{scheme}://{host}/{REDIS_TEST_DB}"


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    # PBKDF2's 1M iterations would dominate the suite; the hasher itself is Django's concern.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _use_test_redis_db():
    settings.REDIS_URL = _test_redis_url(settings.REDIS_URL)
    settings.CACHES["default"]["LOCATION"] = settings.REDIS_URL
    get_redis.cache_clear()
    yield
    get_redis.cache_clear()


@pytest.fixture(autouse=True)
def redis_client(_use_test_redis_db) -> redis_lib.Redis:
    client = get_redis()
    client.flushdb()
    return client
