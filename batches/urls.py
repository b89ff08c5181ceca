"""``/internal/v1/``: the Files and Batch APIs as the gateway forwards them (``batches.internal``)."""

from django.urls import path

from batches import internal

urlpatterns = [
    path("files", internal.files_collection, name="internal-files"),
    path("files/<str:file_id>", internal.file_detail, name="internal-file"),
    path("files/<str:file_id>/content", internal.file_content, name="internal-file-content"),
    path("batches", internal.batches_collection, name="internal-batches"),
    path("batches/<str:batch_id>", internal.batch_detail, name="internal-batch"),
    path("batches/<str:batch_id>/cancel", internal.batch_cancel, name="internal-batch-cancel"),
    path("<path:rest>", internal.unknown),
]
