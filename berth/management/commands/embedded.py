"""``manage.py embedded status|stop``: look after the embedded PostgreSQL and Redis."""

import json

from django.conf import settings
from django.core.management.base import BaseCommand

from berth import embedded


class Command(BaseCommand):
    help = "Show or stop the embedded PostgreSQL and Redis under BERTH_DATA_DIR."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["status", "stop"])

    def handle(self, *args, **options):
        if options["action"] == "stop":
            pg = embedded.stop_postgres(settings.DATA_DIR)
            rd = embedded.stop_redis(settings.DATA_DIR)
            self.stdout.write(
                f"postgres: {'stopped' if pg else 'not running'}; redis: {'stopped' if rd else 'not running'}"
            )
        else:
            self.stdout.write(json.dumps(embedded.status(settings.DATA_DIR), indent=2))
