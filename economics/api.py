"""``GET /api/v1/staff/economics?month=YYYY-MM``: the Economics page's numbers, for staff only.

Staff are platform operators, not tenant members: the check is ``is_staff`` on the signed-in user
(a management key acts as its creator), and anyone else gets 403 whatever their tenant role.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.pricing import CurrencyMismatch
from economics import gpu_hours, report


class IsStaff(BasePermission):
    message = "Staff only."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff)


class MonthQuerySerializer(serializers.Serializer):
    month = serializers.CharField(required=False, help_text="YYYY-MM (UTC); default: the current month.")

    def validate_month(self, value: str) -> str:
        try:
            gpu_hours.month_bounds(value)
        except ValueError:
            raise serializers.ValidationError("Use YYYY-MM, e.g. 2026-03.") from None
        return value


def current_month() -> str:
    return f"{timezone.now():%Y-%m}"


class EconomicsView(APIView):
    """Per model: revenue, GPU-hours (starting, busy, idle, draining), cost, margin, idle costs."""

    permission_classes = [IsStaff]

    @extend_schema(
        parameters=[OpenApiParameter("month", OpenApiTypes.STR, description="YYYY-MM")],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        query = MonthQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        month = query.validated_data.get("month") or current_month()
        try:
            data = report.as_dict(report.build(month))
        except CurrencyMismatch as exc:
            raise serializers.ValidationError({"month": [str(exc)]}) from None
        return Response(data)
