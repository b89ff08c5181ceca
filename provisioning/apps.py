from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "provisioning"
    label = "workers"  # the database tables and permissions keep their names
    verbose_name = "GPU pool and workers"
    default_auto_field = "django.db.models.BigAutoField"
