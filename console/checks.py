"""System check: the console's front-end libraries are installed (``npm ci``)."""

from __future__ import annotations

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.staticfiles)
def frontend_vendor_installed(app_configs=None, **kwargs):
    missing = [
        sub for sub in settings.FRONTEND_VENDOR.values() if not (settings.NODE_MODULES_DIR / sub).is_dir()
    ]
    if not missing:
        return []
    return [
        checks.Error(
            f"Front-end packages missing from {settings.NODE_MODULES_DIR}: {', '.join(missing)}.",
            hint="Run `npm ci` in the repository root (Node.js 18+); the console needs htmx and Chart.js.",
            id="console.E001",
        )
    ]
