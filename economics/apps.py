from django.apps import AppConfig


class EconomicsConfig(AppConfig):
    name = "economics"
    verbose_name = "Operator economics"
    default_auto_field = "django.db.models.BigAutoField"
