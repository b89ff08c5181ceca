from django.apps import AppConfig


class GuardrailsConfig(AppConfig):
    name = "guardrails"
    verbose_name = "Guardrails and content governance"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from guardrails import signals  # noqa: F401  (connects the receivers)
