from django.apps import AppConfig


class BerthConfig(AppConfig):
    """Holds project-wide management commands (``up``, ``embedded``)."""

    name = "berth"
    verbose_name = "Berth"
