"""Berth's Django project package (not ``platform``, which would shadow the standard library's module)."""

from berth.celery import app as celery_app

__all__ = ["celery_app"]
