from django.apps import AppConfig


class BerthConfig(AppConfig):
    """Holds project-wide management commands (``up``, ``embedded``)."""

    name = "berth"
    verbose_name = "Berth"

    def ready(self) -> None:
        # Every Django process (web, usage consumer, commands) sends tasks through this app: create
        # it here, as the package's own import no longer does (see berth/__init__.py).
        from berth import celery  # noqa: F401
