"""Berth's Django project package (not ``platform``, which would shadow the standard library's module).

The Celery application is created when Django starts (``BerthConfig.ready``), not when this
package is imported: ``berth gateway`` imports ``berth.cli`` and must not import Django or Celery.
"""

from __future__ import annotations

from typing import Any

__all__ = ["celery_app"]


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from berth.celery import app

        return app
    raise AttributeError(f"module 'berth' has no attribute {name!r}")
