"""Add the "Priority" plan beside the default ones (0002): the priority band (every service tier,
served first when a model is saturated), a fair-share weight of 4 and no limits. Existing plans
keep the standard band their scheduling migration gave them."""

from django.db import migrations

PLAN = {
    "slug": "priority",
    "name": "Priority",
    "requests_per_minute": None,
    "tokens_per_minute": None,
    "max_concurrent_requests": None,
    "monthly_token_budget": None,
    "monthly_spend_limit": None,
    "monthly_batch_token_budget": None,
    "priority_band": "priority",
    "fair_share_weight": 4,
    "is_default": False,
}


def create_plan(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.get_or_create(slug=PLAN["slug"], defaults=PLAN)


def remove_plan(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(slug=PLAN["slug"], tenants__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("tenants", "0008_plan_scheduling")]
    operations = [migrations.RunPython(create_plan, remove_plan)]
