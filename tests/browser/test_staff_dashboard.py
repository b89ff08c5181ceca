"""A staff user runs the platform from the staff dashboard in a real browser.

The fleet part is end to end: a real node agent (``manage.py node_agent`` subprocess, the fake
engine of tests/workers) and the reconciler running in a background thread every 0.5 s (what
Celery beat does in production), while the page only learns of the new worker through htmx polling.
"""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from berth.redis import names
from billing.models import Invoice, UsageRecord
from models_registry.constants import Engine
from provisioning import reconciler
from provisioning.constants import WorkerState
from provisioning.models import Node, Worker
from tenants.constants import TenantStatus
from tenants.models import Tenant, User
from tests.factories import TenantFactory
from tests.provisioning.conftest import agents, broker, wait_for  # noqa: F401 - fixtures
from tests.registry.factories import DeploymentFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast_timings(settings):
    settings.NODE_LOST_SECONDS = 4
    settings.DRAIN_TIMEOUT = 10
    settings.ENGINE_STOP_GRACE = 5


@pytest.fixture
def reconcile_loop(agents):  # noqa: F811 - after the agents start, stopped before they are
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop():
        try:
            while not stop.is_set():
                reconciler.reconcile()
                stop.wait(0.5)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=loop, name="reconcile-loop", daemon=True)
    thread.start()
    yield errors
    stop.set()
    thread.join(timeout=30)
    assert not errors, errors


def log_in(page, live_server, user):
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )


def test_staff_scale_from_zero_to_ready_worker_suspend_and_charts(
    live_server,
    page,
    shot,
    agents,  # noqa: F811
    reconcile_loop,
    redis_client,
):
    staff = User.objects.create_user(email="ops@berth.test", password="x-Long-pass-1", is_staff=True)
    agents.start("alpha", cpu_slots=2)
    wait_for(lambda: Node.objects.filter(name="alpha").exists(), what="node registration")
    agents.wait_consuming("alpha")
    deployment = DeploymentFactory(
        model__name="tiny-chat", engine=Engine.CPU, desired_replicas=0, max_replicas=2
    )

    log_in(page, live_server, staff)
    page.goto(f"{live_server.url}/staff/")
    expect(page.get_by_role("link", name="Staff", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="alpha")).to_be_visible()
    expect(page.locator("#pool .slot.free")).to_have_count(2)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    row = page.locator(f"#deployment-{deployment.pk}")
    row.get_by_label("Replicas").fill("1")
    row.get_by_role("button", name="Scale").click()
    expect(page.locator(f"#deployment-{deployment.pk} [role=status]")).to_have_text(
        "tiny-chat: desired replicas 0 → 1."
    )

    # The reconciler places it, the agent starts the engine, the next pass sees it healthy; the
    # page hears of each step from its 5-second polls only.
    ready_row = page.locator("#worker-rows tr[data-state=ready]")
    expect(ready_row).to_have_count(1, timeout=60_000)
    expect(ready_row.locator(".badge")).to_have_text("Ready")
    expect(ready_row).to_contain_text("tiny-chat")
    expect(ready_row).to_contain_text("alpha")
    expect(page.locator("#pool .slot.busy")).to_contain_text("tiny-chat", timeout=15_000)
    expect(page.locator(f"#deployment-{deployment.pk} .ready-count")).to_have_text("1 ready", timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    worker = Worker.objects.get(deployment=deployment)
    assert worker.state == WorkerState.READY
    assert staff.email in deployment.events.get(kind="scaled").message
    shot(page, "staff-fleet")

    # Tenants: suspend one, confirming the dialog.
    tenant = TenantFactory(name="Acme Robotics")
    TenantFactory(name="Zeta Labs")
    page.goto(f"{live_server.url}/staff/tenants/")
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Suspend Acme Robotics").click()
    expect(page.locator(f"#tenant-{tenant.pk} [role=status]")).to_have_text("Acme Robotics suspended.")
    expect(page.get_by_role("button", name="Resume Acme Robotics")).to_be_visible()
    assert Tenant.objects.get(pk=tenant.pk).status == TenantStatus.SUSPENDED
    assert redis_client.hget(names().tenant(tenant.pk), "status") == "suspended"
    shot(page, "staff-tenants")

    # Revenue: a chart and its table.
    this_month = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for i, (total, status) in enumerate([("120.50", "paid"), ("80.25", "open"), ("64.00", "paid")]):
        start = (this_month - timedelta(days=32 * (i // 2))).replace(day=1)
        Invoice.objects.create(
            number=f"INV-{i}",
            tenant=tenant if i != 1 else Tenant.objects.get(name="Zeta Labs"),
            period_start=start,
            period_end=start + timedelta(days=28),
            status=status,
            currency="USD",
            subtotal=Decimal(total),
            total=Decimal(total),
        )
    page.goto(f"{live_server.url}/staff/revenue/")
    expect(page.get_by_role("img", name=re.compile("Bar chart"))).to_be_visible()
    assert page.evaluate("!!Chart.getChart(document.querySelector('canvas[data-chart=revenue]'))")
    expect(page.locator("table")).to_contain_text("120.50")
    shot(page, "staff-revenue")

    # Traffic: seeded gateway records over the last minutes.
    now = datetime.now(UTC)
    for minute in range(12):
        for n in range(3 + minute % 4):
            UsageRecord.objects.create(
                request_id=uuid.uuid4().hex,
                tenant=tenant,
                model="tiny-chat",
                endpoint="chat",
                prompt_tokens=40 + n,
                completion_tokens=120,
                status="ok" if n else "upstream_error",
                http_status=200 if n else 502,
                latency_ms=200 + 40 * n + 5 * minute,
                occurred_at=now - timedelta(minutes=minute, seconds=n),
            )
    page.goto(f"{live_server.url}/staff/traffic/")
    expect(page.locator("#traffic-charts")).to_be_visible()
    for canvas in ["chart-rps", "chart-tps", "chart-errors", "chart-latency"]:
        assert page.evaluate(f"!!Chart.getChart(document.getElementById('{canvas}'))"), canvas
    page.get_by_text("Per-minute figures (table)").click()
    expect(page.get_by_role("table")).to_contain_text("ms")
    shot(page, "staff-traffic")
