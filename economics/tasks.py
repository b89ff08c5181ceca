"""Celery tasks of the economics app (run by the ``beat`` schedule; see berth/settings.py)."""

from __future__ import annotations

from celery import shared_task

from economics import sampler


@shared_task(name="economics.tasks.sample_utilization", ignore_result=True)
def sample_utilization() -> int:
    return sampler.sample()
