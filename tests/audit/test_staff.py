"""Staff actions: admin actions and admin edits are recorded as staff; staff read every entry."""

from __future__ import annotations

import pytest

from audit import trail
from audit.models import AuditEntry
from tests.factories import TenantFactory
from tests.registry.factories import DeploymentFactory

pytestmark = pytest.mark.django_db


def test_scaling_from_the_admin_is_a_staff_entry_with_before_and_after(admin_client, admin_user):
    deployment = DeploymentFactory(desired_replicas=2, max_replicas=3)
    admin_client.post(
        "/admin/models_registry/deployment/",
        {"action": "scale_to_zero", "_selected_action": [str(deployment.pk)]},
        REMOTE_ADDR="192.0.2.10",
    )
    entry = AuditEntry.objects.get(action="deployment.scaled")
    assert (entry.actor_kind, entry.actor_id, entry.ip) == ("staff", admin_user.pk, "192.0.2.10")
    assert (entry.before, entry.after) == ({"desired_replicas": 2}, {"desired_replicas": 0})
    assert entry.target_id == str(deployment.pk)


def test_an_admin_edit_without_a_service_is_recorded_from_its_log_entry(admin_client, admin_user):
    from tests.registry.factories import NodeFactory

    node = NodeFactory()
    response = admin_client.post(f"/admin/workers/node/{node.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="node.deleted")
    assert entry.actor_kind == "staff" and entry.target_id == str(node.pk)


def test_staff_see_every_tenants_entries_in_the_admin(admin_client):
    for slug in ("alpha", "beta"):
        trail.record(action="test.visible", tenant=TenantFactory(slug=slug), summary=f"entry of {slug}")
    page = admin_client.get("/admin/audit/auditentry/?action=test.visible").content.decode()
    assert "entry of alpha" in page and "entry of beta" in page
    assert admin_client.get("/admin/audit/auditentry/add/").status_code == 403
    entry = AuditEntry.objects.first()
    assert (
        admin_client.post(f"/admin/audit/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
