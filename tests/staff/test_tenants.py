"""Tenants page: figures for the current period, and suspend / resume with the Redis mirror."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from berth.redis import names
from billing.models import UsageRecord
from tenants import mirror
from tenants.constants import Role, TenantStatus
from tenants.models import Tenant, User
from tests.factories import TenantFactory, member
from tests.registry.factories import ModelFactory, PriceFactory

HTMX = {"HTTP_HX_REQUEST": "true"}


def usage(tenant, model, prompt, completion, at=None, **extra):
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        tenant=tenant,
        model=model,
        endpoint="chat",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=extra.pop("status", "ok"),
        http_status=extra.pop("http_status", 200),
        occurred_at=at or timezone.now(),
        **extra,
    )


@pytest.mark.django_db
def test_tenants_list_plan_members_tokens_and_spend(staff_client):
    model = ModelFactory(name="tiny")
    PriceFactory(model=model, effective_from=timezone.now() - timedelta(days=400))  # 0.50 / 1.50 per M
    acme = TenantFactory(name="Acme")
    member(acme, Role.OWNER)
    member(acme)
    TenantFactory(name="Quiet")
    usage(acme, "tiny", 1_000_000, 1_000_000)
    usage(acme, "tiny", 500, 0, at=timezone.now() - timedelta(days=70))  # an earlier period
    html = staff_client.get(reverse("staff:tenants")).content.decode()
    row = html.split(f'id="tenant-{acme.pk}"')[1].split("</tr>")[0]
    assert "Free" in row and "<td>2</td>" in row and "<td>2,000,000</td>" in row and "$2.00" in row
    quiet = Tenant.objects.get(name="Quiet")
    row = html.split(f'id="tenant-{quiet.pk}"')[1].split("</tr>")[0]
    assert "<td>0</td>" in row and "$0.00" in row and "Suspend" in row


@pytest.mark.django_db
def test_tenants_are_paginated_by_50(staff_client, django_assert_max_num_queries):
    for i in range(55):
        TenantFactory(name=f"T{i:03}")
    with django_assert_max_num_queries(70):  # spend is one query per tenant on the page
        html = staff_client.get(reverse("staff:tenants")).content.decode()
    assert html.count('id="tenant-') == 50 and "Page 1 of 2" in html
    html = staff_client.get(reverse("staff:tenants") + "?page=2").content.decode()
    assert html.count('id="tenant-') == 5


@pytest.mark.django_db(transaction=True)
def test_suspend_and_resume_update_status_and_mirror(client, redis_client):
    staff = User.objects.create_user(email="ops@berth.test", password="x-Long-pass-1", is_staff=True)
    client.force_login(staff)
    tenant = TenantFactory(name="Acme")
    mirror.publish_tenant(tenant)
    url = reverse("staff:tenant-status", args=[tenant.pk])

    response = client.post(url, {"status": "suspended", "confirmed": "1"}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Acme suspended." in html and "Resume" in html
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.SUSPENDED
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "suspended"

    response = client.post(url, {"status": "active", "confirmed": "1"})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "active"


@pytest.mark.django_db
def test_without_javascript_suspend_asks_for_confirmation_first(staff_client):
    tenant = TenantFactory(name="Acme")
    url = reverse("staff:tenant-status", args=[tenant.pk])
    response = staff_client.post(url, {"status": "suspended"})
    assert response.status_code == 200 and "Yes, suspend Acme" in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE


@pytest.mark.django_db
def test_an_unknown_status_is_refused(staff_client):
    tenant = TenantFactory()
    url = reverse("staff:tenant-status", args=[tenant.pk])
    response = staff_client.post(url, {"status": "deleted", "confirmed": "1"})
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE


@pytest.mark.django_db
def test_non_staff_cannot_suspend(client):
    tenant = TenantFactory()
    client.force_login(member(tenant, Role.OWNER))
    url = reverse("staff:tenant-status", args=[tenant.pk])
    assert client.post(url, {"status": "suspended", "confirmed": "1"}).status_code == 403
    tenant.refresh_from_db()
    assert tenant.status == TenantStatus.ACTIVE
