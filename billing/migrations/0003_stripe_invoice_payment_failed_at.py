from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0002_invoices"),
    ]

    operations = [
        migrations.AddField(
            model_name="invoice",
            name="payment_failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
