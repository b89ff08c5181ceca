"""Billing periods: half-open UTC intervals ``[start, end)``, monthly by default.

``BERTH_BILLING_PERIOD`` picks ``month`` (calendar months), ``week`` (ISO weeks, Monday) or
``day``; shorter periods are for trials and demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings

KINDS = ("month", "week", "day")


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime

    def __contains__(self, at: datetime) -> bool:
        return self.start <= at < self.end

    @property
    def label(self) -> str:
        if self.end - self.start > timedelta(days=7):
            return f"{self.start:%B %Y}"
        last = self.end - timedelta(seconds=1)
        if last.date() == self.start.date():
            return f"{self.start:%d %b %Y}"
        return f"{self.start:%d %b} – {last:%d %b %Y}"

    def previous(self) -> Period:
        return period_containing(self.start - timedelta(microseconds=1), self.kind)

    def next(self) -> Period:
        return period_containing(self.end, self.kind)

    @property
    def kind(self) -> str:
        span = self.end - self.start
        if span == timedelta(days=1):
            return "day"
        if span == timedelta(days=7):
            return "week"
        return "month"


def _kind(kind: str | None) -> str:
    kind = kind or settings.BILLING_PERIOD
    if kind not in KINDS:
        raise ValueError(f"billing period must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def period_containing(at: datetime, kind: str | None = None) -> Period:
    kind = _kind(kind)
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return Period(day, day + timedelta(days=1))
    if kind == "week":
        start = day - timedelta(days=day.weekday())
        return Period(start, start + timedelta(days=7))
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Period(start, end)


def parse_period(text: str, kind: str | None = None) -> Period:
    """``2026-10`` (a month) or ``2026-10-05`` (the period containing that day)."""
    kind = _kind(kind)
    try:
        if len(text) == 7:
            at = datetime.strptime(text, "%Y-%m").replace(tzinfo=UTC)
        else:
            at = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"period must look like 2026-10 or 2026-10-05, not {text!r}") from None
    return period_containing(at, kind)
