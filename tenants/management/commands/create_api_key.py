"""``manage.py create_api_key --tenant <slug> [--name …]`` prints the new key, and nothing else.

A management key acts as the member who made it, with the role they hold at each request (see
``tenants/api/authentication.py``), so ``--kind management`` needs ``--user`` naming an active
member of the tenant; without one the key could never authenticate.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from tenants import keys
from tenants.constants import KeyKind
from tenants.models import Membership, Tenant, User


class Command(BaseCommand):
    help = "Create an API key for a tenant and print it once on stdout (only the key, for scripts)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--kind", choices=[k.value for k in KeyKind], default=KeyKind.INFERENCE.value)
        parser.add_argument(
            "--user",
            help="Email of the member the key belongs to (required for --kind management: the key "
            "acts as that member, with their current role).",
        )
        parser.add_argument("--models", default="", help="Comma-separated allowed models (default: all).")
        parser.add_argument("--expires-in-days", type=int, help="Expire the key after this many days.")

    def handle(self, *args, **options):
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['tenant']!r}.")
        days = options["expires_in_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in-days must be positive.")
        user = self._member(tenant, options["user"]) if options["user"] else None
        if options["kind"] == KeyKind.MANAGEMENT and user is None:
            raise CommandError(
                "--kind management needs --user EMAIL: a management key acts as a member of the "
                "tenant, with that member's role."
            )
        created = keys.create_api_key(
            tenant=tenant,
            name=options["name"],
            kind=options["kind"],
            created_by=user,
            allowed_models=[m.strip() for m in options["models"].split(",") if m.strip()],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        self.stdout.write(created.plaintext)

    def _member(self, tenant, email: str) -> User:
        user = User.objects.filter(email__iexact=email.strip()).first()
        if user is None or not user.is_active:
            raise CommandError(f"No active user with email {email!r}.")
        if not Membership.objects.filter(user=user, tenant=tenant).exists():
            raise CommandError(f"{user.email} is not a member of {tenant.slug}.")
        return user
