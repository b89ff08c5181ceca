"""Cost rates: node-or-type rule, and every change audited as ``cost.changed``."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from audit.models import AuditEntry
from economics import costs
from economics.models import CostRate
from tests.registry.factories import NodeFactory
from tests.staff.conftest import staff_client, staff_user  # noqa: F401


def test_rate_change_is_audited_with_before_and_after(db):
    rate = costs.save_rate(rate=CostRate(gpu_type="NVIDIA H100", gpu_hour=Decimal("2.5")))
    rate.gpu_hour = Decimal("3")
    costs.save_rate(rate=rate)
    entries = list(AuditEntry.objects.filter(action="cost.changed").order_by("created_at"))
    assert len(entries) == 2
    assert entries[0].before is None and entries[0].after["gpu_hour"] == "2.500000"
    assert entries[1].before["gpu_hour"] == "2.500000" and entries[1].after["gpu_hour"] == "3.000000"
    costs.delete_rate(rate=rate)
    assert AuditEntry.objects.filter(action="cost.changed").count() == 3
    assert not CostRate.objects.exists()


def test_node_override_cannot_name_a_gpu_type(db):
    with pytest.raises(ValidationError):
        costs.save_rate(rate=CostRate(node=NodeFactory(), gpu_type="NVIDIA H100", gpu_hour=Decimal("1")))


def test_admin_change_is_audited_as_staff(staff_client, staff_user):  # noqa: F811
    staff_user.is_superuser = True
    staff_user.save()
    response = staff_client.post(
        reverse("admin:economics_costrate_add"),
        {"gpu_type": "NVIDIA L4", "gpu_hour": "0.8", "cpu_slot_hour": "0"},
    )
    assert response.status_code == 302, response.content[:2000]
    entry = AuditEntry.objects.get(action="cost.changed")
    assert entry.actor_kind == "staff" and entry.after["gpu_type"] == "NVIDIA L4"
