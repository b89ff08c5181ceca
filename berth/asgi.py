"""ASGI entry point for the web process (console, admin, management API)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "berth.settings")

application = get_asgi_application()
