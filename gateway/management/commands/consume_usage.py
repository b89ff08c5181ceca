"""``manage.py consume_usage``: move the gateway's usage events from Redis to PostgreSQL."""

from django.core.management.base import BaseCommand

from billing import usage


class Command(BaseCommand):
    help = "Consume the gateway's usage stream into billing.UsageRecord (batched, idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=5000)

    def handle(self, *args, **options):
        try:
            usage.run(count=options["batch"])
        except KeyboardInterrupt:
            pass
