"""The filter of a tenant's audit entries, shared by the console page, its CSV and ``/api/v1/audit``.

``action`` matches a whole name or a dotted prefix (``api_key`` finds ``api_key.created`` and
``api_key.revoked``); ``actor`` is part of the actor's label (an email, a key prefix); ``start``
and ``end`` are days, both included (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from django import forms
from django.db.models import Q, QuerySet

from audit.constants import ActorKind
from audit.models import AuditEntry
from tenants.constants import PERM_MANAGE_SETTINGS

# Who may read a tenant's trail: owners and admins (the roles that hold manage_settings).
PERM_VIEW_AUDIT = PERM_MANAGE_SETTINGS


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64, label="Action")
    actor = forms.CharField(required=False, max_length=254, label="Actor")
    actor_kind = forms.ChoiceField(
        required=False, choices=[("", "Anyone"), *ActorKind.choices], label="Actor kind"
    )
    start = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        if data.get("start") and data.get("end") and data["start"] > data["end"]:
            raise forms.ValidationError("The start date is after the end date.")
        return data


def apply(queryset: QuerySet[AuditEntry], data: dict) -> QuerySet[AuditEntry]:
    action = (data.get("action") or "").strip()
    if action:
        queryset = queryset.filter(Q(action=action) | Q(action__startswith=action.rstrip(".") + "."))
    actor = (data.get("actor") or "").strip()
    if actor:
        queryset = queryset.filter(actor_label__icontains=actor)
    if data.get("actor_kind"):
        queryset = queryset.filter(actor_kind=data["actor_kind"])
    if data.get("start"):
        queryset = queryset.filter(created_at__gte=datetime.combine(data["start"], time.min, tzinfo=UTC))
    if data.get("end"):
        queryset = queryset.filter(
            created_at__lt=datetime.combine(data["end"] + timedelta(days=1), time.min, tzinfo=UTC)
        )
    return queryset
