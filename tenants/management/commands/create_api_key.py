"""``manage.py create_api_key --tenant <slug> [--name …]`` prints the new key, and nothing else."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from tenants import keys
from tenants.constants import KeyKind
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Create an API key for a tenant and print it once on stdout (only the key, for scripts)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--kind", choices=[k.value for k in KeyKind], default=KeyKind.INFERENCE.value)
        parser.add_argument("--models", default="", help="Comma-separated allowed models (default: all).")
        parser.add_argument("--expires-in-days", type=int, help="Expire the key after this many days.")

    def handle(self, *args, **options):
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['tenant']!r}.")
        days = options["expires_in_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in-days must be positive.")
        created = keys.create_api_key(
            tenant=tenant,
            name=options["name"],
            kind=options["kind"],
            allowed_models=[m.strip() for m in options["models"].split(",") if m.strip()],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        self.stdout.write(created.plaintext)
