"""``manage.py rebuild_key_mirror``: make the Redis copy of keys and tenants equal PostgreSQL."""

from django.core.management.base import BaseCommand

from guardrails import mirror as guardrails_mirror
from tenants import mirror


class Command(BaseCommand):
    help = "Rebuild the Redis mirror of API keys and tenants that the gateway reads."

    def handle(self, *args, **options):
        result = mirror.resync()
        self.stdout.write(
            f"Mirrored {result['written']} key(s) and {result['tenants']} tenant(s); removed "
            f"{result['removed']} stale key(s) and {result['tenants_removed']} deleted tenant(s)."
        )
        guarded = guardrails_mirror.resync()
        self.stdout.write(
            f"Mirrored the guardrails of {guarded['written']} tenant(s); removed {guarded['removed']} stale."
        )
