"""``manage.py gateway --host --port --workers``: run the gateway (uvicorn) on its own."""

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the metering gateway (an ASGI app; no ORM on its request path)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.GATEWAY_HOST)
        parser.add_argument("--port", type=int, default=settings.GATEWAY_PORT)
        parser.add_argument("--workers", type=int, default=1)

    def handle(self, *args, **options):
        # The gateway reads the same variables as the control plane; pass the resolved
        # addresses on so embedded servers are found without Django in the gateway process.
        env = {**os.environ, "REDIS_URL": settings.REDIS_URL}
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
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "30",
        ]
        os.execve(sys.executable, argv, env)  # noqa: S606 - replace this process with the server
