"""The Celery wiring: tasks registered, beat schedules the reconciler and the autoscaler."""

from django.conf import settings

from berth.celery import app


def test_it_registers_the_provisioning_tasks():
    app.loader.import_default_modules()
    for name in ("reconcile", "autoscale", "start_engine", "stop_engine"):
        assert f"provisioning.tasks.{name}" in app.tasks


def test_beat_runs_the_reconciler_and_the_autoscaler():
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"provisioning.tasks.reconcile", "provisioning.tasks.autoscale"} <= tasks


def test_start_engine_outside_an_agent_does_nothing():
    from provisioning.tasks import start_engine

    assert start_engine("00000000-0000-0000-0000-000000000000") == "not a node agent"
