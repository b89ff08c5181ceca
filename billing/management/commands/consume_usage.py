"""``manage.py consume_usage``: move the gateway's usage events from Redis to PostgreSQL.

The ``usage`` role (berth/roles.py). SIGTERM and Ctrl-C finish the batch in hand, then exit;
``--metrics-port`` serves the consumer's lag to Prometheus and ``/healthz``/``/readyz`` to probes.
"""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from billing import usage


class Command(BaseCommand):
    help = "Consume the gateway's usage stream into billing.UsageRecord (batched, idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=5000)
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.USAGE_METRICS_PORT,
            help="Port for /metrics, /healthz and /readyz (0: any free port; -1: none).",
        )

    def handle(self, *args, **options):
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        port = options["metrics_port"]
        usage.run(count=options["batch"], stop=stop, metrics_port=None if port < 0 else port)
