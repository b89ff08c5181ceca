"""``manage.py create_tenant --name Acme --owner-email a@acme.test [--password …] [--plan …]``."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants import accounts
from tenants.models import Plan, User


class Command(BaseCommand):
    help = "Create a tenant with an owner (the owner account is created if it does not exist)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner-email", required=True)
        parser.add_argument(
            "--password", help="Password for a new owner account (default: unusable; use reset)."
        )
        parser.add_argument("--plan", help="Plan slug (default: the default plan).")
        parser.add_argument("--slug", help="Tenant slug (default: derived from the name).")

    def handle(self, *args, **options):
        plan = None
        if options["plan"]:
            plan = Plan.objects.filter(slug=options["plan"]).first()
            if plan is None:
                slugs = ", ".join(Plan.objects.values_list("slug", flat=True))
                raise CommandError(f"No plan {options['plan']!r}. Plans: {slugs}")
        try:
            with transaction.atomic():
                email = options["owner_email"].strip().lower()
                owner = User.objects.filter(email__iexact=email).first()
                if owner is None:
                    owner = User.objects.create_user(email=email, password=options["password"])
                tenant = accounts.create_tenant(
                    name=options["name"], owner=owner, plan=plan, slug=options["slug"]
                )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(tenant.slug)
        self.stderr.write(f"Created tenant {tenant.name!r} ({tenant.slug}) owned by {owner.email}.")
