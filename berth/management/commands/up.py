"""``manage.py up``: run the whole platform on one machine, supervised.

Migrates, creates (once) a staff user, registers small CPU models on first run, then starts and
supervises the web server (ASGI), the gateway, the usage consumer (``consume_usage``), a Celery
worker, Celery beat and a local node agent — the roles of ``berth/roles.py``, with the commands
listed there — with prefixed, coloured logs. A child that dies is restarted with exponential
backoff (capped, reset once it has stayed up a while) and never stops the others: a consumer that
crashes while PostgreSQL is down must not take the gateway, which never needs PostgreSQL, with it.
Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period) and, when they
are embedded, PostgreSQL and Redis too, so nothing is left running.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

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


class Supervisor:
    def __init__(self, out, colour: bool):
        self.out = out
        self.colour = colour
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

    def log(self, name: str, line: str) -> None:
        width = max(len(c) for c in COLOURS)
        prefix = f"{name:<{width}} |"
        if self.colour:
            prefix = f"\x1b[{COLOURS.get(name, 37)}m{prefix}\x1b[0m"
        with self.lock:
            self.out.write(f"{prefix} {line}\n")
            self.out.flush()

    def start(self, child: Child) -> None:
        child.started_at = time.monotonic()
        child.restart_at = None
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
        self.log("up", f"started {child.name} (pid {child.process.pid})")
        threading.Thread(target=self._pump, args=(child, child.process), daemon=True).start()

    def _pump(self, child: Child, process: subprocess.Popen) -> None:
        for line in process.stdout or ():
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
            self.log(
                "up",
                f"{child.name} exited with code {process.returncode} after {lived:.0f}s; "
                f"restarting it in {delay:.0f}s (crash {child.crashes} in a row)",
            )
            child.restart_at = now + delay

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
            self.log("up", f"{child.name} stopped")

    @staticmethod
    def _signal(process: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own loopback URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False


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

    def handle(self, *args, **options):
        colour = not options["no_color"] and sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sup = Supervisor(self.stdout._out, colour)  # raw stream: children's lines pass unaltered
        sup.log(
            "up",
            f"PostgreSQL: {settings.DATABASE_URL} ({'embedded' if settings.EMBEDDED_DATABASE else 'external'})",
        )
        sup.log(
            "up",
            f"Redis:      {settings.REDIS_URL} ({'embedded' if settings.EMBEDDED_REDIS else 'external'})",
        )

        received: list[int] = []

        def on_signal(signum, frame):
            received.append(signum)
            sup.stopping.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            self._prepare(sup)
            if sup.stopping.is_set():
                return
            py = sys.executable
            manage = str(settings.BASE_DIR / "manage.py")
            web = f"http://{options['web_host']}:{options['web_port']}"
            gateway = f"http://{options['gateway_host']}:{options['gateway_port']}"
            # The console's playground calls the gateway from the web's origin (CORS).
            origins = {web, settings.WEB_PUBLIC_URL, f"http://localhost:{options['web_port']}"}
            sup.env.setdefault("BERTH_GATEWAY_CORS_ORIGINS", ",".join(sorted(origins)))
            values = {
                "python": py,
                "manage": manage,
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
            for name in self.roles_to_run(options):
                sup.add(Child(name, roles.argv(name, **values), health.get(name), env=roles.env(name)))
            for child in sup.children:
                if child.health_url and not sup.stopping.is_set() and not _wait_healthy(child.health_url, 60):
                    sup.log("up", f"{child.name} did not answer {child.health_url} within 60s")
            if not sup.stopping.is_set():
                sup.log(
                    "up",
                    f"Berth is up. Console: {web}/  Admin: {web}/admin/  API docs: {web}/api/docs/",
                )
                sup.log("up", f"Gateway (OpenAI base_url): {gateway}/v1   Press Ctrl-C to stop.")
            while not sup.stopping.is_set():
                sup.watch_once()
                sup.stopping.wait(0.5)
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
            sup.log("up", "bye")
        if sup.failed:
            raise CommandError(sup.failed)

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
        sup.log("up", f"key mirror in Redis: {result['written']} key(s)")
        from workers.bootstrap import ensure_default_models

        note = ensure_default_models()
        if note:
            sup.log("up", note)
        from models_registry import mirror as model_mirror

        result = model_mirror.resync()
        sup.log("up", f"model registry in Redis: {result['written']} model(s)")

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
            sup.log("up", f"created staff user {email} with password: {password}")
            sup.log(
                "up",
                "(shown once; set BERTH_ADMIN_PASSWORD to choose it, or reset it with manage.py changepassword)",
            )
        else:
            sup.log("up", f"created staff user {email} (password from BERTH_ADMIN_PASSWORD)")
