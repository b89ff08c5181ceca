"""GPU-hours, cost, revenue and margin against the hand-computed month in conftest.py."""

from __future__ import annotations

from decimal import Decimal

import pytest

from economics import gpu_hours, report
from models_registry.constants import AdapterSourceKind, AdapterStatus
from models_registry.models import LoraAdapter, Model, Price
from tests.billing.usage import record
from tests.economics.conftest import NOW, at


def test_gpu_seconds_per_worker_phase(fleet_month):
    start, end = gpu_hours.month_bounds("2026-03")
    times = {
        t.model + (":ready" if t.model == "beta" and not t.scaled_to_zero else ""): t
        for t in gpu_hours.worker_times(start, end, now=NOW)
    }
    assert len(times) == 4  # W0 (February) and W5 (April) are out
    alpha = times["alpha"]
    assert (alpha.starting_s, alpha.serving_s, alpha.draining_s) == (3600, 36000, 3600)
    assert alpha.busy_fraction == pytest.approx(0.4)
    assert alpha.busy_s == pytest.approx(4 * 3600) and alpha.idle_s == pytest.approx(6 * 3600)
    assert alpha.cost == Decimal("48.00") and alpha.gpu_type == "NVIDIA H100"
    w3 = times["beta:ready"]
    assert (w3.starting_s, w3.serving_s, w3.busy_fraction) == (3600, 3600, None)
    assert w3.rate.gpu_hour == Decimal("3.00")  # node b's override beats the L4 rate
    assert times["gamma"].cpu_slots == 1 and times["gamma"].cost == Decimal("0.50")


def test_month_report_matches_hand_computed_case(fleet_month):
    data = report.as_dict(report.build("2026-03", now=NOW))
    rows = {row["model"]: row for row in data["models"]}
    alpha, beta, gamma = rows["alpha"], rows["beta"], rows["gamma"]

    assert alpha["gpu_hours"] == 24.0
    assert (alpha["starting_gpu_hours"], alpha["busy_gpu_hours"], alpha["idle_gpu_hours"]) == (2.0, 8.0, 12.0)
    assert alpha["draining_gpu_hours"] == 2.0
    assert (alpha["revenue"], alpha["cost"], alpha["margin"]) == ("20.00", "48.00", "-28.00")
    assert alpha["tokens"] == 15_000_000 and alpha["tokens_per_gpu_hour"] == 625_000.0
    assert alpha["busy_fraction"] == 0.4
    assert alpha["idle_cost"] == "24.00" and alpha["min_replicas_idle_cost"] == "24.00"
    assert alpha["scale_to_zero_idle_cost"] == "0.00"

    assert beta["gpu_hours"] == 6.5
    assert (beta["starting_gpu_hours"], beta["busy_gpu_hours"], beta["idle_gpu_hours"]) == (1.5, 1.0, 4.0)
    assert beta["unmeasured_gpu_hours"] == 1.0 and beta["busy_fraction"] == 0.25
    assert (beta["revenue"], beta["cost"], beta["margin"]) == ("12.00", "19.50", "-7.50")
    assert beta["scale_to_zero_idle_cost"] == "1.50" and beta["min_replicas_idle_cost"] == "0.00"

    assert gamma["gpu_hours"] == 0 and gamma["cpu_slot_hours"] == 10.0
    assert (gamma["revenue"], gamma["cost"], gamma["margin"]) == ("0.00", "0.50", "-0.50")
    assert gamma["tokens_per_gpu_hour"] is None

    total = data["total"]
    assert (total["revenue"], total["cost"], total["margin"]) == ("32.00", "68.00", "-36.00")
    assert total["gpu_hours"] == 30.5
    by_type = {row["gpu_type"]: row["gpu_hours"] for row in data["by_gpu_type"]}
    assert by_type == {"CPU": 0.0, "NVIDIA H100": 24.0, "NVIDIA L4": 6.5}
    by_node = {row["node"]: row["cost"] for row in data["by_node"]}
    assert by_node == {"a": "48.50", "b": "19.50"}


def test_month_not_yet_happened_is_empty(fleet_month):
    data = report.as_dict(report.build("2026-05", now=NOW))
    assert data["models"] == [] and data["total"]["cost"] == "0.00"


@pytest.mark.parametrize("month", ["2026-13", "march", "2026-3-1", ""])
def test_bad_month_is_a_value_error(month):
    with pytest.raises(ValueError):
        gpu_hours.month_bounds(month)


def test_an_adapters_revenue_counts_for_its_base_model(fleet_month):
    tenant = fleet_month["tenant"]
    adapter = LoraAdapter.objects.create(
        tenant=tenant,
        base_model=Model.objects.get(name="beta"),
        name="support",
        source_kind=AdapterSourceKind.PATH,
        source="/srv/adapters/support",
        local_path="/srv/adapters/support",
        rank=8,
        status=AdapterStatus.READY,
    )
    Price.objects.create(
        adapter=adapter,
        input_per_million=Decimal("10"),
        output_per_million=Decimal("10"),
        effective_from=at(1, 1, 0),
    )
    record(tenant, adapter.served_name, at(3, 10, 3), 1_000_000, 0)
    rows = {row["model"]: row for row in report.as_dict(report.build("2026-03", now=NOW))["models"]}
    assert adapter.served_name not in rows
    assert (rows["beta"]["revenue"], rows["beta"]["margin"], rows["beta"]["requests"]) == ("22.00", "2.50", 2)
