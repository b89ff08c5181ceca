"""``/api/v1/models`` and ``/api/v1/adapters`` (each with or without a trailing slash)."""

from django.urls import re_path

from models_registry.api.adapters import AdapterViewSet
from models_registry.api.views import ModelViewSet

adapter_list = AdapterViewSet.as_view({"get": "list", "post": "create"})
adapter_detail = AdapterViewSet.as_view({"get": "retrieve", "delete": "destroy"})

urlpatterns = [
    re_path(r"^models/?$", ModelViewSet.as_view({"get": "list"}), name="model-list"),
    re_path(r"^models/(?P<name>[^/]+?)/?$", ModelViewSet.as_view({"get": "retrieve"}), name="model-detail"),
    re_path(r"^adapters/?$", adapter_list, name="adapter-list"),
    re_path(r"^adapters/(?P<name>[^/]+?)/?$", adapter_detail, name="adapter-detail"),
]
