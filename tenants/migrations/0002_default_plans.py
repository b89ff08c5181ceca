"""Create the default free plan (and an unlimited plan for internal use)."""

from decimal import Decimal

from django.db import migrations

PLANS = [
    {
        "slug": "free",
        "name": "Free",
        "requests_per_minute": 60,
        "tokens_per_minute": 40_000,
        "max_concurrent_requests": 4,
        "monthly_token_budget": 1_000_000,
        "monthly_spend_limit": Decimal("0.00"),
        "is_default": True,
    },
    {
        "slug": "unlimited",
        "name": "Unlimited",
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "max_concurrent_requests": None,
        "monthly_token_budget": None,
        "monthly_spend_limit": None,
        "is_default": False,
    },
]


def create_plans(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    for plan in PLANS:
        Plan.objects.get_or_create(slug=plan["slug"], defaults=plan)


def remove_plans(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(slug__in=[p["slug"] for p in PLANS], tenants__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_plans, remove_plans)]
