"""Three tenants, one user per role, and objects in each tenant for the isolation suites.

* ``home``: the tenant of the owner, admin, member and billing users, with a key, an invitation,
  an invoice, usage and a model private to it.
* ``foreign``: another tenant with the same kinds of objects; every URL that takes an id is also
  called with the foreign object's id.
* ``elsewhere``: the outsider's tenant. The outsider is its owner, so holds every permission, and
  must still see nothing of ``home`` or ``foreign``.

``staff`` is a superuser who belongs to no tenant, as the one ``manage.py up`` creates.
Markers are distinctive strings (names, emails, request ids) that must never appear in a
response to someone outside the tenant that owns them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billing import invoicing
from billing.periods import parse_period
from guardrails import policies
from models_registry.constants import AdapterSourceKind, AdapterStatus, Visibility
from models_registry.models import LoraAdapter
from provisioning.constants import WorkerState
from provisioning.models import Worker
from tenants import invitations, keys
from tenants.constants import KeyKind, Role
from tests.billing.usage import record
from tests.factories import TenantFactory, UserFactory, member
from tests.registry.factories import DeploymentFactory, NodeFactory, add_gpus, priced_model
from webhooks.models import WebhookEndpoint

PERIOD = parse_period("2026-10", "month")
CLOSED_AT = datetime(2026, 11, 2, tzinfo=UTC)
TENANT_ROLES = (Role.OWNER, Role.ADMIN, Role.MEMBER, Role.BILLING)


@dataclass
class Side:
    """One tenant's objects and the markers that betray them."""

    tenant: Any
    owner: Any
    key: Any
    management_key: str
    invitation: Any
    invitation_token: str
    invoice: Any
    private_model: Any
    membership: Any
    adapter: Any
    markers: list[str] = field(default_factory=list)


def _side(label: str, name: str) -> Side:
    tenant = TenantFactory(name=name, slug=f"{label}-org")
    owner = member(tenant, Role.OWNER, email=f"{label}-owner@{label}.test")
    plain = member(tenant, Role.MEMBER, email=f"{label}-plain@{label}.test")
    key = keys.create_api_key(tenant=tenant, name=f"{label}-key-name", created_by=owner).api_key
    management = keys.create_api_key(
        tenant=tenant, name=f"{label}-mgmt-key", created_by=owner, kind=KeyKind.MANAGEMENT
    ).plaintext
    sent = invitations.invite(
        tenant=tenant,
        email=f"{label}-invitee@{label}.test",
        role=Role.MEMBER,
        invited_by=owner,
        base_url="http://testserver/",
    )
    private = priced_model(f"{label}-private-model", visibility=Visibility.PRIVATE)
    private.allowed_tenants.add(tenant)
    record(
        tenant, private.name, PERIOD.start + timedelta(days=3), 1000, 500, request_id=f"req-{label}-marker"
    )
    invoice = invoicing.close_period(tenant=tenant, period=PERIOD, now=CLOSED_AT).invoice
    adapter = _adapter(tenant, private, f"{label}-adapter-name")
    markers = [
        name,
        owner.email,
        plain.email,
        key.name,
        key.lookup_id,
        sent.invitation.email,
        private.name,
        f"req-{label}-marker",
        adapter.name,
    ]
    return Side(
        tenant=tenant,
        owner=owner,
        key=key,
        management_key=management,
        invitation=sent.invitation,
        invitation_token=sent.url.rstrip("/").rsplit("/", 1)[-1],
        invoice=invoice,
        private_model=private,
        membership=plain.memberships.get(tenant=tenant),
        adapter=adapter,
        markers=markers,
    )


def _adapter(tenant, base, name: str) -> LoraAdapter:
    return LoraAdapter.objects.create(
        tenant=tenant,
        base_model=base,
        name=name,
        source_kind=AdapterSourceKind.PATH,
        source=f"/srv/adapters/{name}",
        local_path=f"/srv/adapters/{name}",
        rank=8,
        status=AdapterStatus.READY,
    )


class World:
    """Everything the matrix needs; ``users[role]`` is None for anonymous."""

    def __init__(self):
        self.home = _side("home", "Home Harbour Org")
        self.foreign = _side("foreign", "Foreign Secretive Org")
        elsewhere = TenantFactory(name="Elsewhere Org", slug="elsewhere-org")
        self.users = {role: member(self.home.tenant, role) for role in TENANT_ROLES if role != Role.OWNER}
        self.users[Role.OWNER] = self.home.owner
        self.users["outsider"] = member(elsewhere, Role.OWNER, email="outsider@elsewhere.test")
        self.users["anonymous"] = None
        self.users["staff"] = UserFactory(email="staff@operator.test", is_staff=True, is_superuser=True)
        node = NodeFactory(name="matrix-node")
        add_gpus(node, 1)
        self.deployment = DeploymentFactory(model=priced_model("public-chat"), desired_replicas=1)
        self.worker = Worker.objects.create(
            deployment=self.deployment, node=node, cpu_slot=0, state=WorkerState.READY, port=9
        )
        self.guardrails = {}
        for label, side in (("home", self.home), ("foreign", self.foreign)):
            name = f"{label}-guardrail-marker"
            self.guardrails[label] = policies.create_policy(
                tenant=side.tenant, name=name, detectors={"email": "flag"}
            )
            side.markers.append(name)
        self.webhooks = {}
        for label, side in (("home", self.home), ("foreign", self.foreign)):
            url = f"https://93.184.216.34/{label}-webhook-marker"
            self.webhooks[label] = WebhookEndpoint.objects.create(
                tenant=side.tenant, url=url, events=["invoice.paid"]
            )
            side.markers.append(f"{label}-webhook-marker")

    def markers_hidden_from(self, role: str) -> list[str]:
        """What ``role`` must never see: the other tenants' markers (staff sees everything)."""
        if role == "staff":
            return []
        if role in ("outsider", "anonymous"):
            return self.home.markers + self.foreign.markers
        return self.foreign.markers

    # Fresh objects for probes that change or delete what they target.
    def new_home_member(self) -> str:
        return str(member(self.home.tenant, Role.MEMBER).memberships.get(tenant=self.home.tenant).pk)

    def new_home_key(self) -> str:
        return str(
            keys.create_api_key(tenant=self.home.tenant, name="spare", created_by=self.home.owner).api_key.pk
        )

    def new_home_adapter(self) -> str:
        return str(_adapter(self.home.tenant, self.home.private_model, f"spare-{uuid.uuid4().hex[:8]}").pk)

    def new_home_adapter_name(self) -> str:
        return LoraAdapter.objects.get(pk=self.new_home_adapter()).name

    def new_home_guardrail(self) -> str:
        return str(
            policies.create_policy(tenant=self.home.tenant, name="spare", detectors={"email": "flag"}).pk
        )

    def new_home_webhook(self) -> str:
        return str(
            WebhookEndpoint.objects.create(
                tenant=self.home.tenant, url="https://93.184.216.34/spare", events=["invoice.paid"]
            ).pk
        )

    def new_home_invitation(self) -> str:
        return str(self._invite(self.home).pk)

    def _invite(self, side: Side):
        return invitations.invite(
            tenant=side.tenant,
            email=f"spare-{UserFactory.build().email}",
            role=Role.MEMBER,
            invited_by=side.owner,
            base_url="http://testserver/",
        ).invitation

    def values(self) -> dict[str, Any]:
        """Placeholders for probe paths; callables make a fresh object per request."""
        home, foreign = self.home, self.foreign
        return {
            "home_key": home.key.pk,
            "foreign_key": foreign.key.pk,
            "home_member": home.membership.pk,
            "foreign_member": foreign.membership.pk,
            "home_invitation": home.invitation.pk,
            "foreign_invitation": foreign.invitation.pk,
            "foreign_invitation_token": foreign.invitation_token,
            "home_guardrail": self.guardrails["home"].pk,
            "foreign_guardrail": self.guardrails["foreign"].pk,
            "new_home_guardrail": self.new_home_guardrail,
            "home_webhook": self.webhooks["home"].pk,
            "foreign_webhook": self.webhooks["foreign"].pk,
            "new_home_webhook": self.new_home_webhook,
            "home_invoice": home.invoice.pk,
            "foreign_invoice": foreign.invoice.pk,
            "home_model": home.private_model.name,
            "foreign_model": foreign.private_model.name,
            "home_tenant": home.tenant.pk,
            "foreign_tenant": foreign.tenant.pk,
            "deployment": self.deployment.pk,
            "worker": self.worker.pk,
            "new_home_member": self.new_home_member,
            "new_home_key": self.new_home_key,
            "new_home_invitation": self.new_home_invitation,
            "home_adapter": home.adapter.name,
            "foreign_adapter": foreign.adapter.name,
            "foreign_adapter_id": foreign.adapter.pk,
            "new_home_adapter": self.new_home_adapter,
            "new_home_adapter_name": self.new_home_adapter_name,
            "new_email": lambda: f"invitee-{uuid.uuid4().hex[:10]}@newcomer.test",
        }
