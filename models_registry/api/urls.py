"""``/api/v1/models`` and ``/api/v1/models/<name>``, with or without a trailing slash."""

from django.urls import re_path

from models_registry.api.views import ModelViewSet

urlpatterns = [
    re_path(r"^models/?$", ModelViewSet.as_view({"get": "list"}), name="model-list"),
    re_path(r"^models/(?P<name>[^/]+?)/?$", ModelViewSet.as_view({"get": "retrieve"}), name="model-detail"),
]
