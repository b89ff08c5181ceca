"""Revenue by month and gateway traffic per minute: exact sums and PostgreSQL percentiles."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import Invoice, UsageRecord
from staff import queries
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 30, 20, tzinfo=UTC)


def invoice(tenant, start: datetime, total: str, status: str, currency: str = "USD"):
    return Invoice.objects.create(
        number=uuid.uuid4().hex[:12],
        tenant=tenant,
        period_start=start,
        period_end=start + timedelta(days=28),
        status=status,
        currency=currency,
        subtotal=Decimal(total),
        total=Decimal(total),
    )


def test_the_usage_table_name_in_the_raw_sql_is_right():
    assert f"FROM {UsageRecord._meta.db_table}\n" in queries.TRAFFIC_SQL


def test_revenue_sums_paid_and_open_per_month_exactly():
    a, b = TenantFactory(), TenantFactory()
    invoice(a, datetime(2026, 3, 1, tzinfo=UTC), "0.10", "paid")
    invoice(b, datetime(2026, 3, 1, tzinfo=UTC), "0.20", "paid")
    invoice(a, datetime(2026, 2, 1, tzinfo=UTC), "12.345", "open")
    invoice(b, datetime(2026, 2, 1, tzinfo=UTC), "1.005", "paid")
    invoice(a, datetime(2026, 1, 1, tzinfo=UTC), "99.00", "draft")  # not counted
    invoice(b, datetime(2026, 1, 1, tzinfo=UTC), "5.00", "void")  # not counted
    invoice(a, datetime(2025, 3, 1, tzinfo=UTC), "7.00", "paid")  # 13 months ago: out
    invoice(a, datetime(2025, 4, 1, tzinfo=UTC), "8.00", "paid", currency="EUR")

    result = queries.revenue_by_month(NOW)
    assert list(result) == ["EUR", "USD"]
    usd = {m.month: m for m in result["USD"]}
    assert len(usd) == 12 and min(usd) == date(2025, 4, 1) and max(usd) == date(2026, 3, 1)
    assert usd[date(2026, 3, 1)].paid == Decimal("0.30") and usd[date(2026, 3, 1)].open == Decimal("0")
    assert usd[date(2026, 2, 1)].paid == Decimal("1.005") and usd[date(2026, 2, 1)].open == Decimal("12.345")
    assert usd[date(2026, 2, 1)].total == Decimal("13.350")
    assert usd[date(2026, 1, 1)].total == 0
    assert all(isinstance(m.paid, Decimal) for m in usd.values())
    assert result["EUR"][0].paid == Decimal("8.00")


def test_revenue_page_has_chart_table_and_empty_state(staff_client):
    html = staff_client.get(reverse("staff:revenue")).content.decode()
    assert "No paid or open invoices" in html and "<canvas" not in html
    invoice(TenantFactory(), datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0), "42.50", "paid")
    html = staff_client.get(reverse("staff:revenue")).content.decode()
    assert 'data-chart="revenue"' in html and 'aria-label="Bar chart' in html
    assert "<caption>Invoice totals per month in USD</caption>" in html and "<td>$42.50</td>" in html
    assert 'id="revenue-data-USD"' in html and "chart.umd.min.js" in html


def usage(at, latency_ms, *, status="ok", http_status=200, prompt=10, completion=20):
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        tenant_id=TENANT_ID,
        model="tiny",
        endpoint="chat",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=status,
        http_status=http_status,
        latency_ms=latency_ms,
        occurred_at=at,
    )


# Usage rows have no database constraint on their tenant (billing/models.py): any id will do.
TENANT_ID = uuid.UUID("00000000-0000-0000-0000-00000000000a")


def test_traffic_per_minute_with_percentiles_and_errors():
    minute = NOW.replace(second=0) - timedelta(minutes=5)
    for latency in range(1, 101):  # 1..100 ms
        usage(minute + timedelta(seconds=latency % 60), latency)
    usage(minute + timedelta(seconds=1), 5, status="upstream_error", http_status=502)
    usage(minute + timedelta(seconds=2), 5, status="ok", http_status=503)
    usage(minute + timedelta(seconds=3), 5, status="client_disconnected", http_status=200)  # not an error
    usage(minute + timedelta(seconds=4), 5, status="error", http_status=429)
    usage(NOW - timedelta(minutes=61), 1)  # outside the hour
    usage(NOW.replace(second=5), 300)  # the current minute counts

    rows = queries.traffic(NOW)
    assert len(rows) == 60
    assert rows[-1].minute == NOW.replace(second=0) and rows[-1].requests == 1 and rows[-1].p50_ms == 300
    [row] = [r for r in rows if r.minute == minute]
    assert row.requests == 104 and row.errors == 3 and row.tokens == 104 * 30
    assert row.error_rate == round(100 * 3 / 104, 2)
    # percentile_cont over the 104 latencies: 1..100 and 5, 5, 5, 5
    latencies = sorted([*range(1, 101), 5, 5, 5, 5])
    assert row.p50_ms == pytest.approx(_percentile(latencies, 0.5))
    assert row.p99_ms == pytest.approx(_percentile(latencies, 0.99))
    assert row.requests_per_s == round(104 / 60, 3) and row.tokens_per_s == round(104 * 30 / 60, 2)
    empty = rows[0]
    assert empty.requests == 0 and empty.error_rate is None and empty.p50_ms is None

    series = queries.traffic_series(rows)
    assert len(series["labels"]) == 60 and series["labels"][-1] == "12:30"


def _percentile(sorted_values, fraction):
    """PostgreSQL's percentile_cont: linear interpolation between closest ranks."""
    position = fraction * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def test_traffic_page_empty_state_and_fragment(staff_client):
    html = staff_client.get(reverse("staff:traffic")).content.decode()
    assert "No gateway traffic in the last hour." in html and 'hx-trigger="every 30s"' in html
    assert 'id="traffic-series"' in html
    usage(datetime.now(UTC), 120, status="upstream_error", http_status=502)
    fragment = staff_client.get(reverse("staff:traffic-data")).content.decode()
    assert "<html" not in fragment and "1 requests, 30 tokens, 1 errors" in fragment
    assert "100.0%" in fragment and "120.0 ms" in fragment
