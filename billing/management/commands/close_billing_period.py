"""Close a billing period into invoices by hand (Celery beat does it hourly; it is idempotent)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing import invoicing
from billing.periods import parse_period, period_containing
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Invoice each tenant's unbilled usage for a period (default: the last one that ended)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="A tenant's slug or id (default: every tenant).")
        parser.add_argument(
            "--period",
            help="2026-10 or 2026-10-05 (the period containing that day); default: the last ended.",
        )
        parser.add_argument("--no-stripe", action="store_true", help="Do not push new invoices to Stripe.")

    def handle(self, *args, tenant=None, period=None, no_stripe=False, **options):
        now = timezone.now()
        try:
            chosen = parse_period(period) if period else period_containing(now).previous()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if chosen.end > now:
            raise CommandError(f"{chosen.label} has not ended yet (it ends {chosen.end:%Y-%m-%d %H:%M} UTC).")
        target = None
        if tenant:
            target = Tenant.objects.filter(slug=tenant).first()
            if target is None:
                try:
                    target = Tenant.objects.filter(pk=tenant).first()
                except Exception:  # noqa: BLE001 - not a UUID
                    target = None
            if target is None:
                raise CommandError(f"no tenant with slug or id {tenant!r}")
        results = invoicing.close_all(period=chosen, tenant=target, now=now)
        for result in results:
            if result.error:
                self.stderr.write(result.message)
            elif result.invoice is not None:
                self.stdout.write(result.message)
        created = sum(1 for r in results if r.created)
        self.stdout.write(self.style.SUCCESS(f"{chosen.label}: {created} invoice(s) created."))
        if no_stripe:
            return
        from billing import stripe_sync

        if stripe_sync.configured():
            synced = stripe_sync.sync_pending()
            self.stdout.write(f"Stripe: {synced} invoice(s) created there.")
