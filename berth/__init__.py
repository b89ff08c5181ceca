"""Berth's Django project package (the design card calls it ``platform/``; see README)."""

from berth.celery import app as celery_app

__all__ = ["celery_app"]
