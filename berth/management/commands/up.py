"""``berth up`` (or ``manage.py up``): run the whole platform on one machine, supervised.

Migrates, creates (once) a staff user, registers small CPU models on first run, then starts and
supervises the web server (ASGI), the gateway, the usage consumer (``consume_usage``), a Celery
worker, Celery beat and a local node agent — the roles of ``berth/roles.py``, with the commands
listed there. A child that dies is restarted with exponential backoff (capped, reset once it has
stayed up a while) and never stops the others: a consumer that crashes while PostgreSQL is down
must not take the gateway, which never needs PostgreSQL, with it. Ctrl-C or SIGTERM stops every
child (SIGTERM, then SIGKILL after a grace period) and, when they are embedded, PostgreSQL and
Redis too, so nothing is left running.

Each role's whole output goes to ``BERTH_DATA_DIR/logs/<role>.log`` (appended to, with a line at
every start and exit); the terminal gets a short status instead — where to connect, each role's
state, each model's readiness from PostgreSQL, and errors with the log to read — redrawn in place
on a terminal, as plain lines when the output is a file or a pipe. Interleaved logs drown that
status (Celery alone prints two banners), so they are on the terminal only with ``--verbose``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from berth import embedded, roles
from berth.process import die_with_parent

COLOURS = {"web": 36, "gateway": 35, "worker": 33, "beat": 34, "agent": 32, "usage": 31, "up": 37}
GRACE_SECONDS = 10
BACKOFF_FIRST = 1.0  # seconds before the first restart; doubles with each crash in a row
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0  # a child up this long has recovered: its next crash starts from BACKOFF_FIRST
STATUS_EVERY = 1.0  # seconds between two looks at the models' readiness in PostgreSQL
LOG_TAIL_BYTES = 4096


@dataclass
class Child:
    name: str
    argv: list[str]
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    crashes: int = 0  # in a row, without a stable run in between
    restart_at: float | None = None
    restarts: int = 0
    healthy: bool = False  # answered its health URL since its last start (or has none)
    log_path: Path | None = None
    log_file: IO[str] | None = None
    log_lock: threading.Lock = field(default_factory=threading.Lock)
    last_exit: str = ""
    backoff_delay: float = 0.0  # of the restart it waits for
    pumps: list[threading.Thread] = field(default_factory=list)  # copying its output to the log

    def state(self, stopping: bool) -> str:
        """One short phrase: starting, running, restarting (with its backoff), stopped or exited."""
        process = self.process
        if process is None:
            return "not started"
        if self.restart_at is not None and not stopping:
            return f"restarting (backoff {self.backoff_delay:.0f}s, crash {self.crashes} in a row; {self.last_exit})"
        code = process.poll()
        if code is not None:
            return "stopped" if stopping else f"exited with code {code}"
        if stopping:
            return "stopping"
        if self.health_url and not self.healthy:
            return "starting"
        return f"running (pid {process.pid})"


class Display:
    """The terminal: event lines that scroll, under them a status block.

    On a TTY the block is redrawn in place; otherwise each status line is printed when it changes,
    so a log file or CI output reads as a sequence of plain lines.
    """

    def __init__(self, out: IO[str], *, live: bool):
        self.out = out
        self.live = live
        self.lock = threading.RLock()
        self.block: list[str] = []
        self.drawn = 0
        self.printed: dict[str, str] = {}

    def line(self, text: str) -> None:
        with self.lock:
            self._erase()
            self.out.write(f"{text}\n")
            self._draw()
            self.out.flush()

    def status(self, lines: Iterable[tuple[str, str]]) -> None:
        """Show ``(key, text)`` lines: in place on a TTY, else the ones whose text changed."""
        lines = list(lines)
        with self.lock:
            if self.live:
                block = [text for _, text in lines]
                if block != self.block:
                    self._erase()
                    self.block = block
                    self._draw()
            else:
                for key, text in lines:
                    if self.printed.get(key) != text:
                        self.printed[key] = text
                        self.out.write(f"{text}\n")
            self.out.flush()

    def release(self) -> None:
        """Leave the block where it is: later lines print under it instead of redrawing it."""
        with self.lock:
            self.block = []
            self.drawn = 0

    def _erase(self) -> None:
        if self.drawn:
            # Up to the block's first line, then clear to the end of the screen.
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        if not self.live or not self.block:
            return
        width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line would break the count
        for text in self.block:
            self.out.write(f"{text[:width]}\n")
        self.drawn = len(self.block)


class Supervisor:
    def __init__(
        self,
        out: IO[str],
        colour: bool,
        *,
        log_dir: Path | None = None,
        verbose: bool = False,
        live: bool = False,
    ):
        self.out = out
        self.colour = colour
        self.verbose = verbose
        self.display = Display(out, live=live and not verbose)
        self.log_dir = log_dir
        self.up_log: IO[str] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.up_log = open(log_dir / "up.log", "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.failed: str | None = None
        self.backoff_first = BACKOFF_FIRST
        self.backoff_max = BACKOFF_MAX
        self.stable_after = STABLE_AFTER
        # Children resolve DATABASE_URL/REDIS_URL the way we did: from the environment, or from
        # the embedded servers we already started (which they find running, in about a millisecond).
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "berth.settings",
        }

    def log(self, name: str, line: str, *, detail: bool = False, secret: bool = False) -> None:
        """A line from a child (``name``) or from us (``"up"``).

        A child's lines go to its log file, and to the terminal with ``--verbose``. Ours go to
        ``up.log`` (unless ``secret``: a password is shown once, never written down) and the
        terminal; ``detail`` ones (what the status block already shows) reach the terminal only
        with ``--verbose``.
        """
        if name == "up" and not secret:
            with self.lock:
                if self.up_log is not None:
                    self.up_log.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")  # noqa: DTZ005 - local time, for people
        if self.verbose:
            width = max(len(c) for c in COLOURS)
            prefix = f"{name:<{width}} |"
            if self.colour:
                prefix = f"\x1b[{COLOURS.get(name, 37)}m{prefix}\x1b[0m"
            self.display.line(f"{prefix} {line}")
        elif name == "up" and not detail:
            self.display.line(line)

    def start(self, child: Child) -> None:
        child.started_at = time.monotonic()
        child.restart_at = None
        child.healthy = child.health_url is None
        if self.log_dir is not None and child.log_file is None:
            child.log_path = self.log_dir / f"{child.name}.log"
            child.log_file = open(child.log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        child.process = subprocess.Popen(  # noqa: S603
            child.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **child.env},
            cwd=settings.BASE_DIR,
            start_new_session=True,  # own process group: Ctrl-C reaches only us, we stop the group
            preexec_fn=die_with_parent,  # noqa: PLW1509
            text=True,
            bufsize=1,
            errors="replace",
        )
        self._mark(child, f"started (pid {child.process.pid}): {' '.join(child.argv)}")
        self.log("up", f"started {child.name} (pid {child.process.pid})", detail=True)
        pump = threading.Thread(target=self._pump, args=(child, child.process), daemon=True)
        pump.start()
        child.pumps = [*(p for p in child.pumps if p.is_alive()), pump]

    def _mark(self, child: Child, text: str) -> None:
        self._write(child, f"--- {datetime.now():%Y-%m-%d %H:%M:%S} {text}\n")  # noqa: DTZ005

    @staticmethod
    def _write(child: Child, text: str) -> None:
        with child.log_lock:
            if child.log_file is not None:
                child.log_file.write(text)

    def _pump(self, child: Child, process: subprocess.Popen) -> None:
        for line in process.stdout or ():
            self._write(child, line if line.endswith("\n") else f"{line}\n")
            if self.verbose:
                self.log(child.name, line.rstrip("\n"))

    def add(self, child: Child) -> None:
        self.children.append(child)
        self.start(child)

    def backoff(self, crashes: int) -> float:
        return min(self.backoff_max, self.backoff_first * 2 ** max(0, crashes - 1))

    def watch_once(self) -> None:
        """Restart what died, each on its own schedule: never wait on, nor stop, the others."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is None or self.stopping.is_set():
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.start(child)
                continue
            if process.poll() is None:
                continue
            lived = now - child.started_at
            child.crashes = 1 if lived >= self.stable_after else child.crashes + 1
            delay = self.backoff(child.crashes)
            child.backoff_delay = delay
            child.last_exit = f"exited with code {process.returncode}"
            self._mark(child, f"exited with code {process.returncode} after {lived:.0f}s")
            message = (
                f"{child.name} exited with code {process.returncode} after {lived:.0f}s; "
                f"restarting it in {delay:.0f}s (crash {child.crashes} in a row)"
            )
            if child.log_path is not None:
                message += f"; its log: {child.log_path}"
                last = last_line(child.log_path)
                if last:
                    message += f"\n    last line: {last}"
            self.log("up", message)
            child.restart_at = now + delay

    def status_lines(self) -> list[tuple[str, str]]:
        width = max((len(c.name) for c in self.children), default=0)
        stopping = self.stopping.is_set()
        return [(c.name, f"  {c.name:<{width}}  {c.state(stopping)}") for c in self.children]

    def stop_all(self) -> None:
        self.stopping.set()
        for child in self.children:
            if child.process and child.process.poll() is None:
                self._signal(child.process, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in self.children:
            process = child.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log("up", f"{child.name} did not stop in {GRACE_SECONDS}s; killing it")
            # Kill whatever is left of the group (pool processes, engines) either way.
            self._signal(process, signal.SIGKILL)
            process.wait()
            self._mark(child, f"stopped (code {process.returncode})")
            self.log("up", f"{child.name} stopped", detail=True)
        self.display.status(self.status_lines())
        self.display.release()  # the final states stay on screen; what follows prints below them

    def close(self) -> None:
        """Close the log files, once the pumps have copied what the stopped children left in their pipes."""
        for child in self.children:
            for pump in child.pumps:
                pump.join(timeout=2)
            with child.log_lock:
                if child.log_file is not None:
                    child.log_file.close()
                child.log_file = None
        with self.lock:
            if self.up_log is not None:
                self.up_log.close()
            self.up_log = None

    @staticmethod
    def _signal(process: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def last_line(path: Path) -> str:
    """The last non-empty line of a log file, or ``""``."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - LOG_TAIL_BYTES))
            tail = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.startswith("--- ")]
    return lines[-1][:300] if lines else ""


@dataclass(frozen=True)
class ReplicaView:
    """What the status needs of one worker (replica) of a deployment."""

    state: str
    pending_reason: str = ""
    failure_reason: str = ""
    log_path: str = ""


def describe_model(*, desired: int, replicas: Iterable[ReplicaView]) -> str:
    """A deployment's readiness in a few words, e.g. ``loading (2/3 workers ready)``.

    ``replicas`` are its live workers and the ones that failed since ``up`` started, newest first.
    """
    from provisioning.constants import WorkerState

    replicas = list(replicas)
    ready = sum(r.state == WorkerState.READY for r in replicas)
    starting = sum(r.state == WorkerState.STARTING for r in replicas)
    pending = [r for r in replicas if r.state == WorkerState.PENDING]
    failed = [r for r in replicas if r.state == WorkerState.FAILED]
    count = f"{ready}/{desired} workers ready"
    if desired == 0 and ready == 0 and not starting:
        return "scaled to zero (starts on the first request)"
    if ready >= desired:
        return f"ready ({ready}/{desired} workers)"
    if failed and replicas[0].state == WorkerState.FAILED:
        reason = (
            failed[0].failure_reason.splitlines()[0][:200] if failed[0].failure_reason else "no reason given"
        )
        where = f"; its log: {failed[0].log_path}" if failed[0].log_path else ""
        return f"failed ({count}): {reason}{where}"
    if starting:
        return f"loading ({count})"
    if pending:
        reason = pending[0].pending_reason
        return f"waiting for capacity ({count})" + (f": {reason}" if reason else "")
    return f"waiting for a worker ({count})"


def model_status(*, since: datetime) -> list[tuple[str, str]]:
    """Each deployment's readiness, read from PostgreSQL; one line saying so if it is unreachable."""
    from django.db import DatabaseError, InterfaceError, connection
    from django.db.models import Q

    from models_registry.models import Deployment
    from provisioning.constants import LIVE_STATES, WorkerState
    from provisioning.models import Worker

    try:
        deployments = list(Deployment.objects.select_related("model").order_by("model__name", "created_at"))
        replicas: dict[Any, list[ReplicaView]] = {d.id: [] for d in deployments}
        recent = Q(state__in=LIVE_STATES) | Q(state=WorkerState.FAILED, finished_at__gte=since)
        rows = (
            Worker.objects.filter(recent, deployment__in=deployments)
            .order_by("-created_at")
            .values_list("deployment_id", "state", "pending_reason", "failure_reason", "log_path")
        )
        for deployment_id, state, pending_reason, failure_reason, log_path in rows:
            replicas[deployment_id].append(ReplicaView(state, pending_reason, failure_reason, log_path))
    except (DatabaseError, InterfaceError):
        connection.close()  # a fresh one next time, once PostgreSQL is back
        return [("models", "  models: PostgreSQL unreachable; the status returns with it")]
    if not deployments:
        return [("models", "  models: none registered (berth pull_model <repo-or-path>)")]
    width = max(len(d.model.name) for d in deployments)
    return [
        (
            f"model {d.id}",
            f"  {d.model.name:<{width}}  {describe_model(desired=d.desired_replicas, replicas=replicas[d.id])}",
        )
        for d in deployments
    ]


def _wait_healthy(child: Child, stopping: threading.Event, timeout: float) -> bool:
    if child.health_url is None:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping.is_set():
        try:
            with urllib.request.urlopen(child.health_url, timeout=2) as response:  # noqa: S310 - our own loopback URL
                if response.status == 200:
                    child.healthy = True
                    return True
        except OSError:
            pass
        stopping.wait(0.25)
    return False


def _link_embedded_logs(log_dir: Path) -> None:
    """Put the embedded servers' own log files next to the roles' (as links), where people look."""
    for server, name in (("postgres", "postgres.log"), ("redis", "redis.log")):
        target = settings.DATA_DIR / server / name
        link = log_dir / name
        if target.exists() and not link.exists() and not link.is_symlink():
            try:
                link.symlink_to(target)
            except OSError:
                pass


class Command(BaseCommand):
    help = "Run Berth on this machine: web, gateway, Celery worker and beat (and embedded PostgreSQL/Redis)."

    def add_arguments(self, parser):
        parser.add_argument("--web-host", default=settings.WEB_HOST)
        parser.add_argument("--web-port", type=int, default=settings.WEB_PORT)
        parser.add_argument("--gateway-host", default=settings.GATEWAY_HOST)
        parser.add_argument("--gateway-port", type=int, default=settings.GATEWAY_PORT)
        parser.add_argument("--worker-concurrency", type=int, default=2)
        parser.add_argument(
            "--node-name", default=settings.NODE_NAME or "local", help="Name of the local node agent."
        )
        parser.add_argument("--no-agent", action="store_true", help="Run no node agent on this machine.")
        parser.add_argument(
            "--usage-metrics-port",
            type=int,
            default=0,
            help="The usage consumer's /metrics port (default: any free port; it logs which).",
        )
        parser.add_argument(
            "--keep-embedded",
            action="store_true",
            help="Leave embedded PostgreSQL/Redis running on exit.",
        )
        parser.add_argument(
            "--verbose",
            action="store_true",
            help="Show every role's output here, prefixed with the role, besides its log file.",
        )

    def handle(self, *args, **options):
        out: IO[str] = self.stdout._out  # type: ignore[assignment]  # raw stream: lines pass unaltered
        tty = out.isatty() and os.environ.get("TERM") != "dumb"
        colour = not options["no_color"] and tty and "NO_COLOR" not in os.environ
        log_dir = settings.DATA_DIR / "logs"
        sup = Supervisor(out, colour, log_dir=log_dir, verbose=options["verbose"], live=tty)
        for label, url, is_embedded, server in (
            ("PostgreSQL:", settings.DATABASE_URL, settings.EMBEDDED_DATABASE, "postgres"),
            ("Redis:", settings.REDIS_URL, settings.EMBEDDED_REDIS, "redis"),
        ):
            where = f"embedded; its log: {log_dir / server}.log" if is_embedded else "external"
            sup.log("up", f"{label:<11} {url} ({where})")

        received: list[int] = []

        def on_signal(signum, frame):
            received.append(signum)
            sup.stopping.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        # A closed terminal: by default it would kill only us, and the children follow (PDEATHSIG),
        # but the embedded servers are daemons and would stay up.
        signal.signal(signal.SIGHUP, on_signal)
        try:
            self._prepare(sup)
            _link_embedded_logs(log_dir)
            if sup.stopping.is_set():
                return
            py = sys.executable
            web = f"http://{options['web_host']}:{options['web_port']}"
            gateway = f"http://{options['gateway_host']}:{options['gateway_port']}"
            # The console's playground calls the gateway from the web's origin (CORS).
            origins = {web, settings.WEB_PUBLIC_URL, f"http://localhost:{options['web_port']}"}
            sup.env.setdefault("BERTH_GATEWAY_CORS_ORIGINS", ",".join(sorted(origins)))
            # Batch lines (batches/runner.py) go from the worker to this gateway with the internal
            # token: a development run without one gets one for this run, the same in every child.
            sup.env.setdefault(
                "BERTH_GATEWAY_INTERNAL_URL",
                f"http://{roles.reachable(options['gateway_host'])}:{options['gateway_port']}",
            )
            # /v1/files and /v1/batches go from the gateway to this run's web role (its --web-port,
            # not the settings' default), unless the environment names another control plane.
            control_plane = {}
            if "BERTH_GATEWAY_CONTROL_PLANE_URL" not in os.environ:
                control_plane["BERTH_GATEWAY_CONTROL_PLANE_URL"] = (
                    f"http://{roles.reachable(options['web_host'])}:{options['web_port']}"
                )
            if not settings.INTERNAL_TOKEN:
                sup.env.setdefault("BERTH_INTERNAL_TOKEN", secrets.token_urlsafe(32))
            values = {
                "python": py,
                "manage": self.manage_script(),
                "web_host": options["web_host"],
                "web_port": options["web_port"],
                "gateway_host": options["gateway_host"],
                "gateway_port": options["gateway_port"],
                "trusted_proxies": ",".join(settings.TRUSTED_PROXIES),
                "usage_metrics_port": options["usage_metrics_port"],
                "worker_concurrency": options["worker_concurrency"],
                "beat_schedule": str(settings.DATA_DIR / "celerybeat-schedule"),
                "node_name": options["node_name"],
            }
            # uvicorn's own variable, read by the gateway's server (the entrypoint sets it the same).
            sup.env.setdefault("FORWARDED_ALLOW_IPS", values["trusted_proxies"])
            health = {"web": f"{web}/healthz", "gateway": f"{gateway}/healthz"}
            sup.log(
                "up",
                f"each role's output: {log_dir}/<role>.log"
                + ("" if sup.verbose else " (--verbose shows it here)"),
            )
            for name in self.roles_to_run(options):
                child_env = roles.env(name)
                if "BERTH_GATEWAY_CONTROL_PLANE_URL" in child_env:  # the settings' port, not --web-port
                    child_env.update(control_plane)
                sup.add(Child(name, roles.argv(name, **values), health.get(name), env=child_env))
            sup.display.status(sup.status_lines())
            for child in sup.children:
                healthy = not child.health_url or _wait_healthy(child, sup.stopping, 60)
                if not healthy and not sup.stopping.is_set():
                    sup.log(
                        "up",
                        f"{child.name} did not answer {child.health_url} within 60s; its log: {child.log_path}",
                    )
                sup.display.status(sup.status_lines())
            if not sup.stopping.is_set():
                sup.log(
                    "up",
                    f"Berth is up. Console: {web}/  Admin: {web}/admin/  API docs: {web}/api/docs/",
                )
                sup.log("up", f"Gateway (OpenAI base_url): {gateway}/v1   Press Ctrl-C to stop.")
            self._supervise(sup)
        finally:
            sup.log("up", "stopping…")
            sup.stop_all()
            if not options["keep_embedded"]:
                for enabled, stop, label in (
                    (settings.EMBEDDED_DATABASE, embedded.stop_postgres, "PostgreSQL"),
                    (settings.EMBEDDED_REDIS, embedded.stop_redis, "Redis"),
                ):
                    try:
                        if enabled and stop(settings.DATA_DIR):
                            sup.log("up", f"embedded {label} stopped")
                    except embedded.EmbeddedError as exc:  # still stop the other one
                        sup.log("up", f"could not stop embedded {label}: {exc}")
                        sup.failed = sup.failed or f"embedded {label} did not stop"
            sup.log("up", "every process stopped; bye" if not sup.failed else "bye")
            sup.close()
        if sup.failed:
            raise CommandError(sup.failed)

    @staticmethod
    def _supervise(sup: Supervisor) -> None:
        """Restart what dies; show the roles' states and the models' readiness about once a second."""
        from django.utils import timezone

        since = timezone.now()
        models: list[tuple[str, str]] = []
        next_look = 0.0
        while not sup.stopping.is_set():
            sup.watch_once()
            if time.monotonic() >= next_look:
                models = model_status(since=since)
                next_look = time.monotonic() + STATUS_EVERY
            sup.display.status([*sup.status_lines(), *models])
            sup.stopping.wait(0.5)

    @staticmethod
    def manage_script() -> str:
        """``manage.py`` in a checkout; after a plain ``pip install``, the ``berth`` script instead."""
        manage = Path(settings.BASE_DIR) / "manage.py"
        if manage.exists():
            return str(manage)
        return shutil.which("berth", path=str(Path(sys.executable).parent)) or "berth"

    @staticmethod
    def roles_to_run(options) -> list[str]:
        """Every long-running role of berth/roles.py (``migrate`` runs first, in this process)."""
        names = [role.name for role in roles.ROLES if role.long_running]
        return [name for name in names if not (name == "agent" and options["no_agent"])]

    def _prepare(self, sup: Supervisor) -> None:
        sup.log("up", "applying migrations…")
        call_command("migrate", interactive=False, verbosity=0)
        if not settings.DEBUG:
            call_command("collectstatic", interactive=False, verbosity=0)
        self._ensure_staff_user(sup)
        from tenants import mirror

        result = mirror.resync()
        sup.log("up", f"key mirror in Redis: {result['written']} key(s)", detail=True)
        from provisioning.bootstrap import ensure_default_models

        note = ensure_default_models()
        if note:
            sup.log("up", note)
        from models_registry import mirror as model_mirror

        result = model_mirror.resync()
        sup.log("up", f"model registry in Redis: {result['written']} model(s)", detail=True)

    def _ensure_staff_user(self, sup: Supervisor) -> None:
        from tenants.models import User

        email = os.environ.get("BERTH_ADMIN_EMAIL", "admin@localhost").lower()
        if User.objects.filter(is_staff=True).exists():
            return
        password = os.environ.get("BERTH_ADMIN_PASSWORD")
        generated = password is None
        password = password or secrets.token_urlsafe(16)
        User.objects.create_superuser(email=email, password=password)
        if generated:
            sup.log("up", f"created staff user {email} with password: {password}", secret=True)
            sup.log(
                "up",
                "(shown once; set BERTH_ADMIN_PASSWORD to choose it, or reset it with berth changepassword)",
            )
        else:
            sup.log("up", f"created staff user {email} (password from BERTH_ADMIN_PASSWORD)")
