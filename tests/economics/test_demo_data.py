"""``manage.py demo_data``: realistic, marked, idempotent, and ``--remove`` restores the database."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from django.apps import apps
from django.core.management import call_command

from billing.models import UsageRecord
from economics import report
from economics.models import CostRate, DemoObject, UtilizationHour
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tenants.models import Tenant
from tests.factories import TenantFactory
from tests.registry.factories import NodeFactory

NOW = datetime(2026, 3, 20, 15, 30, tzinfo=UTC)


def _counts() -> dict[str, int]:
    return {
        m._meta.label: m.objects.count() for m in apps.get_models() if m._meta.label != "economics.DemoObject"
    }


def _run(*args) -> str:
    out = io.StringIO()
    call_command("demo_data", *args, stdout=out)
    return out.getvalue()


def test_demo_data_then_remove_leaves_the_database_as_before(db, monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)
    real = TenantFactory(slug="demo-acme", name="A real tenant named demo")  # the slug is taken
    NodeFactory(name="real-node")
    CostRate.objects.create(gpu_type="NVIDIA L40S", gpu_hour="1.50")  # a staff rate demo must not touch
    before = _counts()

    out = _run("--days", "3", "--scale", "0.5")
    assert "Created demo data: 3 tenants" in out
    demo_tenants = Tenant.objects.filter(name__startswith="Demo ")
    assert demo_tenants.count() == 3 and not demo_tenants.filter(pk=real.pk).exists()
    assert {t.slug for t in demo_tenants} >= {"demo-acme-2", "demo-globex", "demo-initech"}
    usage = UsageRecord.objects.filter(tenant__in=demo_tenants)
    usage_count = usage.count()
    assert usage_count > 50
    # diurnal: the afternoon is busier than the night
    afternoon = usage.filter(occurred_at__hour__in=[13, 14, 15]).count()
    night = usage.filter(occurred_at__hour__in=[6, 7, 8]).count()
    assert afternoon > night
    assert not Worker.objects.exclude(state__in=[WorkerState.STOPPED, WorkerState.FAILED]).exists()
    assert UtilizationHour.objects.exists()
    assert CostRate.objects.get(gpu_type="NVIDIA L40S").gpu_hour == 1.5

    data = report.as_dict(report.build("2026-03", now=NOW))
    llama = next(m for m in data["models"] if m["model"] == "demo-llama-3.1-8b")
    assert llama["gpu_hours"] > 0 and llama["revenue"] != "0.00" and 0 < llama["busy_fraction"] < 1
    # every demo GPU a worker holds exists on its node, so each has a known type
    assert "" not in {row["gpu_type"] for row in data["by_gpu_type"]}

    assert "already present" in _run()  # idempotent
    assert DemoObject.objects.filter(model_label="tenants.Tenant").count() == 3

    workers = Worker.objects.count()
    assert f"Removed demo data: 3 tenants, {usage_count} usage records, {workers} workers." in _run(
        "--remove"
    )
    assert _counts() == before
    assert Tenant.objects.filter(pk=real.pk).exists()
    assert not DemoObject.objects.exists()
