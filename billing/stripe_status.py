"""Whether invoices can be paid online (Stripe configured), for pages and PDFs."""

from django.conf import settings


def online_payment() -> bool:
    return bool(settings.STRIPE_SECRET_KEY)
