"""Data residency: a tenant that requires a residency label gets its private models only on nodes
that carry it; a deployment with no such node stays pending and says why."""

from __future__ import annotations

import pytest
from django.utils import timezone

from models_registry.constants import Visibility
from provisioning.constants import WorkerState
from provisioning.models import Worker
from provisioning.placement import NodeCapacity, Placement, Request, Unplaceable, place
from tests.factories import TenantFactory
from tests.registry.factories import DeploymentFactory, ModelFactory, NodeFactory


def cpu_node(name: str, residency: str = "", slots: int = 2) -> NodeCapacity:
    return NodeCapacity(
        node_id=name, name=name, free_cpu_slots=list(range(slots)), cpu_slots=slots, residency=residency
    )


def test_a_required_residency_picks_only_matching_nodes():
    nodes = [cpu_node("us-1", "us", slots=1), cpu_node("eu-1", "eu"), cpu_node("plain")]
    assert place(Request(gpus=0, residencies=("eu",)), nodes) == Placement(node_id="eu-1", cpu_slot=0)
    # Without a requirement the fullest node wins, whatever its label.
    assert place(Request(gpus=0), nodes) == Placement(node_id="us-1", cpu_slot=0)


def test_it_says_when_no_node_has_the_residency():
    result = place(Request(gpus=0, residencies=("ch",)), [cpu_node("eu-1", "eu"), cpu_node("plain")])
    assert result == Unplaceable("data residency 'ch' is required and no ready node has that residency label")


def test_tenants_requiring_different_residencies_cannot_share_a_model():
    result = place(
        Request(gpus=0, residencies=("us", "eu")), [cpu_node("eu-1", "eu"), cpu_node("us-1", "us")]
    )
    assert isinstance(result, Unplaceable)
    assert "different data residencies (eu, us)" in result.reason


def test_residency_and_node_labels_both_apply():
    eu = cpu_node("eu-1", "eu")
    eu.labels = {"zone": "a"}
    result = place(Request(gpus=0, residencies=("eu",), node_selector={"zone": "b"}), [eu, cpu_node("x")])
    assert result == Unplaceable("no ready node with residency 'eu' has labels {'zone': 'b'}")


@pytest.mark.django_db
class TestReconciler:
    def test_a_tenants_private_model_lands_only_on_a_matching_node(self, reconcile, seams):
        NodeFactory(name="us-node", residency="us", cpu_slots=4, last_heartbeat=timezone.now())
        eu = NodeFactory(name="eu-node", residency="eu", cpu_slots=4, last_heartbeat=timezone.now())
        tenant = TenantFactory(data_residency="eu")
        model = ModelFactory(name="res-private", visibility=Visibility.PRIVATE)
        model.allowed_tenants.add(tenant)
        deployment = DeploymentFactory(model=model, desired_replicas=3)
        reconcile()
        placed = Worker.objects.filter(deployment=deployment)
        assert {w.node_id for w in placed} == {eu.pk}
        assert [w.state for w in placed] == [WorkerState.STARTING] * 3

    def test_with_no_matching_node_it_stays_pending_with_the_reason(self, reconcile, seams):
        NodeFactory(name="us-only", residency="us", last_heartbeat=timezone.now())
        tenant = TenantFactory(data_residency="eu")
        model = ModelFactory(name="res-stuck", visibility=Visibility.PRIVATE)
        model.allowed_tenants.add(tenant)
        DeploymentFactory(model=model, desired_replicas=1)
        reconcile()
        worker = Worker.objects.get()
        assert worker.state == WorkerState.PENDING
        assert (
            worker.pending_reason
            == "data residency 'eu' is required and no ready node has that residency label"
        )

    def test_public_models_and_tenants_without_a_requirement_go_anywhere(self, reconcile, seams):
        NodeFactory(name="only", residency="us", last_heartbeat=timezone.now())
        TenantFactory(data_residency="eu")  # not granted the models below
        DeploymentFactory(model=ModelFactory(name="res-public"), desired_replicas=1)
        private = ModelFactory(name="res-free", visibility=Visibility.PRIVATE)
        private.allowed_tenants.add(TenantFactory())
        DeploymentFactory(model=private, desired_replicas=1)
        reconcile()
        assert set(Worker.objects.values_list("state", flat=True)) == {WorkerState.STARTING}

    def test_a_new_requirement_moves_running_replicas_to_a_matching_node(self, reconcile, seams):
        us = NodeFactory(name="us-run", residency="us", cpu_slots=1, last_heartbeat=timezone.now())
        eu = NodeFactory(name="eu-run", residency="eu", cpu_slots=1, last_heartbeat=timezone.now())
        tenant = TenantFactory()
        model = ModelFactory(name="res-moving", visibility=Visibility.PRIVATE)
        model.allowed_tenants.add(tenant)
        deployment = DeploymentFactory(model=model, desired_replicas=1)
        Worker.objects.create(
            deployment=deployment, node=us, cpu_slot=0, state=WorkerState.READY, api_key="k", url="http://w"
        )
        tenant.data_residency = "eu"
        tenant.save()
        reconcile()
        old = Worker.objects.get(node=us)
        assert old.state == WorkerState.DRAINING
        assert "lacks the data residency its tenants require (eu)" in old.events.first().message
        new = Worker.objects.exclude(pk=old.pk).get(deployment=deployment)
        assert (new.node_id, new.state) == (eu.pk, WorkerState.STARTING)
