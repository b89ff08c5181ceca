"""Management API: the current tenant's batches and files (read, cancel a batch, download a file).

The same objects as ``/v1/batches`` and ``/v1/files`` (``batches.objects``), for the console's
session or a management key instead of an inference key. Every member may read (``view_tenant``);
cancelling needs ``use_api_keys``, as starting a batch does. Another tenant's ids are 404.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from batches import files, submission
from batches.errors import ApiError
from batches.internal import file_content_response
from batches.models import Batch, BatchEndpoint, BatchStatus, File, FilePurpose
from batches.objects import batch_object, file_object
from tenants.api.permissions import TenantPermission, request_tenant
from tenants.constants import PERM_USE_KEYS, PERM_VIEW


class FileSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField()
    expires_at = serializers.IntegerField(allow_null=True)
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=FilePurpose.choices)
    status = serializers.CharField()
    status_details = serializers.CharField(allow_null=True)

    def to_representation(self, instance):
        return file_object(instance)


class RequestCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()


class BatchSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    endpoint = serializers.ChoiceField(choices=BatchEndpoint.choices)
    model = serializers.CharField(allow_null=True)
    errors = serializers.JSONField(
        allow_null=True, help_text='{"object": "list", "data": [{code, message, param, line}]}'
    )  # type: ignore[assignment]
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=BatchStatus.choices)
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField()
    in_progress_at = serializers.IntegerField(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    finalizing_at = serializers.IntegerField(allow_null=True)
    completed_at = serializers.IntegerField(allow_null=True)
    failed_at = serializers.IntegerField(allow_null=True)
    expired_at = serializers.IntegerField(allow_null=True)
    cancelling_at = serializers.IntegerField(allow_null=True)
    cancelled_at = serializers.IntegerField(allow_null=True)
    request_counts = RequestCountsSerializer()
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)

    def to_representation(self, instance):
        return batch_object(instance)


def _drf(exc: ApiError) -> exceptions.APIException:
    if exc.status == 404:
        return exceptions.NotFound(exc.message)
    error = exceptions.APIException(exc.message)
    error.status_code = exc.status
    return error


class FileViewSet(viewsets.ReadOnlyModelViewSet):
    """The current tenant's files (uploads and batch results), newest first."""

    serializer_class = FileSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW
    queryset = File.objects.none()

    def get_queryset(self):
        return files.live_files(request_tenant(self.request)).order_by("-created_at", "-pk")

    @extend_schema(responses={(200, "application/jsonl"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def content(self, request, pk=None):
        try:
            return file_content_response(self.get_object())
        except ApiError as exc:
            raise _drf(exc) from None


class BatchViewSet(viewsets.ReadOnlyModelViewSet):
    """The current tenant's batches, newest first; ``cancel`` stops one (``use_api_keys``)."""

    serializer_class = BatchSerializer
    permission_classes = [TenantPermission]
    read_perm = PERM_VIEW
    write_perm = PERM_USE_KEYS
    queryset = Batch.objects.none()

    def get_queryset(self):
        return submission.tenant_batches(request_tenant(self.request)).order_by("-created_at", "-pk")

    @extend_schema(request=None, responses=BatchSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        batch = self.get_object()
        try:
            batch = submission.cancel_batch(tenant=request_tenant(request), batch_id=batch.pk)
        except ApiError as exc:
            raise _drf(exc) from None
        return Response(batch_object(batch))
