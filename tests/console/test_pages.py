"""Console pages: overview chart data, models, usage (+ CSV), settings; scoped to the tenant."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection
from django.utils import timezone

from billing.models import BillingAccount
from models_registry.constants import Visibility
from tests.billing.usage import record
from tests.factories import TenantFactory, member
from tests.gateway.conftest import free_port, uvicorn
from tests.registry.factories import DeploymentFactory, ModelFactory, priced_model

pytestmark = pytest.mark.django_db


@pytest.fixture
def world():
    chat = priced_model("chat-one", "0.125", "0.5", context_length=8192)
    DeploymentFactory(model=chat)
    ours, theirs = TenantFactory(name="Ours"), TenantFactory(name="Theirs")
    secret = ModelFactory(name="their-secret", visibility=Visibility.PRIVATE)
    secret.allowed_tenants.add(theirs)
    now = timezone.now()
    record(ours, "chat-one", now - timedelta(days=1), 4_000_000, 1_000_000)
    record(ours, "chat-one", now - timedelta(days=2), 1_000, 500, status="upstream_error", http_status=502)
    record(theirs, "chat-one", now - timedelta(days=1), 777_777, 0)
    return {"ours": ours, "theirs": theirs, "now": now}


def csv_text(response) -> str:
    return b"".join(response.streaming_content).decode()


def login(client, tenant, role):
    user = member(tenant, role)
    client.force_login(user)
    client.post("/switch/", {"tenant": str(tenant.pk)})
    return user


def test_overview_chart_has_this_tenants_tokens_only(client, world):
    login(client, world["ours"], "owner")
    response = client.get("/")
    html = response.content.decode()
    data = json.loads(html.split('id="tokens-by-day" type="application/json">')[1].split("</script>")[0])
    assert sum(data["series"]["chat-one"]) == 4_000_000 + 1_000_000 + 1_500
    assert len(data["labels"]) == 30
    assert "777,777" not in html
    assert "$1.00" in html  # 4M x 0.125 + 1M x 0.5 (error request rounds away)
    assert 'model": "chat-one"' in html or "chat-one" in html  # quick start names a real model


def test_overview_hides_spend_from_plain_members(client, world):
    login(client, world["ours"], "member")
    html = client.get("/").content.decode()
    assert "Spend" not in html and "$" not in html.split("Quick start")[0]


def test_models_page_lists_public_and_own_private_models_with_prices(client, world):
    login(client, world["ours"], "member")
    html = client.get("/models/").content.decode()
    assert "chat-one" in html and "$0.125" in html and "8,192" in html
    assert "their-secret" not in html
    login(client, world["theirs"], "member")
    assert "their-secret" in client.get("/models/").content.decode()


def test_usage_page_table_and_cost_column_by_role(client, world):
    login(client, world["ours"], "owner")
    html = client.get("/usage/").content.decode()
    assert "4,000,000" in html and "Est. cost" in html and "777,777" not in html
    client.logout()
    login(client, world["ours"], "member")
    html = client.get("/usage/").content.decode()
    assert "4,000,000" in html and "Est. cost" not in html


def test_usage_htmx_request_returns_the_fragment(client, world):
    login(client, world["ours"], "owner")
    day = (world["now"] - timedelta(days=1)).date().isoformat()
    response = client.get("/usage/", {"start": day, "end": day}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert "4,000,000" in html and "1,000" not in html.replace("1,000,000", "")


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-10-05", "2026-10-01", "on or after"),
        ("2024-01-01", "2026-10-01", "at most 366"),
        ("x", "", "valid"),
    ],
)
def test_usage_range_errors_are_form_errors(client, world, start, end, message):
    login(client, world["ours"], "owner")
    response = client.get("/usage/", {"start": start, "end": end})
    assert response.status_code == 400
    assert message in response.content.decode()


def test_usage_csv_per_request_and_per_day(client, world):
    login(client, world["ours"], "owner")
    start = (world["now"] - timedelta(days=3)).date().isoformat()
    end = world["now"].date().isoformat()
    response = client.get("/usage.csv", {"start": start, "end": end})
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith(
        f'attachment; filename="berth-usage-{world["ours"].slug}-'
    )
    rows = list(csv.DictReader(io.StringIO(csv_text(response))))
    assert [int(r["total_tokens"]) for r in rows] == [1_500, 5_000_000]
    assert rows[0]["status"] == "upstream_error" and rows[0]["http_status"] == "502"
    daily = client.get("/usage.csv", {"start": start, "end": end, "granularity": "day"})
    rows = list(csv.DictReader(io.StringIO(csv_text(daily))))
    assert [Decimal(r["estimated_cost"]) for r in rows][1] == Decimal("1.000000")
    assert client.get("/usage.csv", {"start": end, "end": start}).status_code == 400


def test_usage_csv_for_a_member_has_no_cost(client, world):
    login(client, world["ours"], "member")
    day = world["now"].date().isoformat()
    response = client.get("/usage.csv", {"start": "2020-01-01", "end": day, "granularity": "day"})
    assert response.status_code == 400  # over a year
    start = (world["now"] - timedelta(days=3)).date().isoformat()
    response = client.get("/usage.csv", {"start": start, "end": day, "granularity": "day"})
    header = csv_text(response).splitlines()[0]
    assert "estimated_cost" not in header


def test_usage_csv_pages_through_equal_timestamps_without_losing_or_repeating_rows(
    client, world, monkeypatch
):
    monkeypatch.setattr("console.pages.CSV_BATCH_ROWS", 3)
    at = world["now"] - timedelta(hours=1)
    ids = sorted(record(world["ours"], "chat-one", at, n, 0).request_id for n in range(1, 8))
    login(client, world["ours"], "owner")
    span = {"start": at.date().isoformat(), "end": world["now"].date().isoformat()}
    rows = list(csv.DictReader(io.StringIO(csv_text(client.get("/usage.csv", span)))))
    same_time = [r["request_id"] for r in rows if r["occurred_at"] == at.isoformat()]
    assert sorted(same_time) == ids and len(same_time) == 7


def test_usage_csv_under_asgi_is_an_async_stream(async_client, world):
    """Given a sync iterator, Django's ASGI handler reads it whole into a list before sending."""
    user = member(world["ours"], "owner")
    day = world["now"].date().isoformat()

    async def download():
        await async_client.aforce_login(user)
        response = await async_client.get("/usage.csv", {"start": day, "end": day})
        assert response.status_code == 200 and response.is_async
        return b"".join([part async for part in response.streaming_content]).decode()

    assert async_to_sync(download)().startswith("occurred_at,request_id,")


def test_settings_spend_limit_and_alerts(client, world, monkeypatch, django_capture_on_commit_callbacks):
    checked = []
    monkeypatch.setattr("billing.spend.check_tenant", lambda *, tenant: checked.append(tenant.pk))
    login(client, world["ours"], "owner")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            "/settings/",
            {
                "form": "billing",
                "billing-spend_limit": "25.50",
                "billing-alert_thresholds": ["80", "100"],
                "billing-billing_email": "books@ours.test",
            },
        )
    assert response.status_code == 302
    account = BillingAccount.objects.get(tenant=world["ours"])
    assert account.spend_limit == Decimal("25.50") and account.alert_thresholds == [80, 100]
    assert len(callbacks) == 1, callbacks
    assert checked == [world["ours"].pk]
    bad = client.post("/settings/", {"form": "billing", "billing-spend_limit": "-3"})
    assert bad.status_code == 400 and "greater than or equal to 0" in bad.content.decode()
    renamed = client.post("/settings/", {"form": "organization", "org-name": "Ours Renamed"})
    assert renamed.status_code == 302
    world["ours"].refresh_from_db()
    assert world["ours"].name == "Ours Renamed"


def test_settings_permissions(client, world):
    login(client, world["ours"], "member")
    assert client.post("/settings/", {"form": "billing", "billing-spend_limit": "1"}).status_code == 403
    assert client.post("/settings/", {"form": "organization", "org-name": "x"}).status_code == 403
    client.logout()
    login(client, world["ours"], "billing")
    assert client.post("/settings/", {"form": "billing", "billing-spend_limit": "1"}).status_code == 302
    assert client.post("/settings/", {"form": "organization", "org-name": "x"}).status_code == 403


EXPORT_ROWS = 200_000


def _insert_usage(tenant, rows: int, at) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_usagerecord (request_id, tenant_id, model, endpoint, prompt_tokens,
                completion_tokens, status, http_status, latency_ms, ttft_ms, worker_id, occurred_at,
                recorded_at)
            SELECT 'bulk-' || n, %s, 'chat-one', 'chat', n %% 1000, 7, 'ok', 200, 120, 30, '',
                %s + (n / 10) * interval '1 millisecond', now()
            FROM generate_series(1, %s) AS n
            """,
            [tenant.pk, at, rows],
        )


def _web_process():
    db = connection.settings_dict
    url = urlsplit(settings.DATABASE_URL)._replace(path="/" + db["NAME"]).geturl()
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "DEBUG": "1",
    }
    return uvicorn("berth.asgi:application", free_port(), env, "/healthz")


@pytest.mark.processes  # the web role under uvicorn
@pytest.mark.django_db(transaction=True)
def test_usage_csv_of_200k_rows_streams_through_asgi_with_flat_memory(client):
    """Under ASGI a sync iterator is read whole into a list first; the export must not be."""
    tenant = TenantFactory(name="Big")
    now = timezone.now()
    at = now.replace(hour=0, minute=0, second=0, microsecond=0)
    _insert_usage(tenant, EXPORT_ROWS, at)
    login(client, tenant, "owner")
    cookies = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
    span = {"start": at.date().isoformat(), "end": now.date().isoformat()}
    before = (at - timedelta(days=1)).date().isoformat()
    web = _web_process()
    try:
        process = psutil.Process(web.process.pid)
        with httpx.Client(base_url=web.url, cookies=cookies, timeout=60) as http:
            for granularity in ("day", "request"):  # imports, connections, the thread pool
                warm = http.get(
                    "/usage.csv", params={"start": before, "end": before, "granularity": granularity}
                )
                assert warm.status_code == 200, warm.text[:500]
            baseline = process.memory_info().rss
            peak, size, lines = baseline, 0, 0
            with http.stream("GET", "/usage.csv", params=span) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    lines += chunk.count(b"\n")
                    peak = max(peak, process.memory_info().rss)
    finally:
        web.stop()
    assert lines == EXPORT_ROWS + 1
    growth = peak - baseline
    assert size > 10_000_000
    print(f"peak RSS growth {growth / 1e6:.1f} MB for {size / 1e6:.1f} MB of CSV")
    assert growth < size / 2, f"web process grew {growth / 1e6:.1f} MB serving a {size / 1e6:.1f} MB CSV"
