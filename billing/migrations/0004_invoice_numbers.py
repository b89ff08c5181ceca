from django.db import migrations, models

# Invoice numbers take their serial from this sequence (billing/invoicing.py invoice_number):
# unique by construction, whatever the tenants' slugs. Existing invoices keep their numbers.
CREATE = "CREATE SEQUENCE IF NOT EXISTS billing_invoice_number_seq START 1"
DROP = "DROP SEQUENCE IF EXISTS billing_invoice_number_seq"


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_stripe_invoice_payment_failed_at"),
    ]

    operations = [
        migrations.RunSQL(CREATE, DROP),
        migrations.AddField(
            model_name="billingaccount",
            name="grace_restarted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="billingaccount",
            name="close_failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="billingaccount",
            name="close_failed_period_start",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="billingaccount",
            name="close_error",
            field=models.TextField(blank=True),
        ),
    ]
