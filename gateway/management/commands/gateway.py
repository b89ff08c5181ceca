"""``manage.py gateway --host --port --workers``: run the gateway (uvicorn) on its own."""

import os
import shutil
import sys
import tempfile

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the metering gateway (an ASGI app; no ORM on its request path)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.GATEWAY_HOST)
        parser.add_argument("--port", type=int, default=settings.GATEWAY_PORT)
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument(
            "--grace-seconds",
            type=int,
            default=settings.GATEWAY_GRACE_SECONDS,
            help="On SIGTERM, how long in-flight requests may finish before they are cut (and billed as delivered).",
        )

    def handle(self, *args, **options):
        # The gateway reads the same variables as the control plane but never imports Django:
        # pass on what Django resolved (embedded Redis URL, generated dev peppers).
        env = {
            **os.environ,
            "REDIS_URL": settings.REDIS_URL,
            "BERTH_KEY_PEPPERS": ",".join(f"{pid}:{secret}" for pid, secret in settings.KEY_PEPPERS.items()),
            "BERTH_REDIS_PREFIX": settings.REDIS_PREFIX,
            "LOG_LEVEL": settings.LOG_LEVEL,
        }
        env.pop("BERTH_KEY_PEPPERS_FILE", None)
        if options["workers"] > 1 and "PROMETHEUS_MULTIPROC_DIR" not in env:
            # Several processes: let /metrics aggregate them (prometheus_client multiprocess mode).
            path = settings.DATA_DIR / "gateway-metrics"
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(path) if path.exists() else tempfile.mkdtemp()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.app:app",
            "--host",
            options["host"],
            "--port",
            str(options["port"]),
            "--workers",
            str(options["workers"]),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",  # the gateway writes its own structured access log
            "--timeout-graceful-shutdown",
            str(options["grace_seconds"]),
        ]
        os.execve(sys.executable, argv, env)  # noqa: S606 - replace this process with the server
