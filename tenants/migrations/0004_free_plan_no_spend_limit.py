"""The free plan had a spend limit of 0.00, which billing's spend check (billing/spend.py) reads as
"refuse every request": its monthly token budget already bounds it, so it gets no spend limit.
Plans an operator changed are left alone."""

from decimal import Decimal

from django.db import migrations


def lift(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(slug="free", monthly_spend_limit=Decimal("0.00")).update(monthly_spend_limit=None)


def restore(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(slug="free", monthly_spend_limit__isnull=True).update(
        monthly_spend_limit=Decimal("0.00")
    )


class Migration(migrations.Migration):
    dependencies = [("tenants", "0003_invitations")]

    operations = [migrations.RunPython(lift, restore)]
