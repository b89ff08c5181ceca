"""Django admin for staff: models, prices, LoRA adapters.

Deployments are administered in ``provisioning/admin.py``, next to the workers that serve them.
"""

from django.contrib import admin

from models_registry import catalog
from models_registry.models import LoraAdapter, Model, ModelManifest, Price


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    can_delete = False
    fields = ["input_per_million", "output_per_million", "currency", "effective_from", "created_at"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request, obj=None):
        return False  # history is kept: add a new row instead


@admin.register(Model)
class ModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "task",
        "source_kind",
        "source",
        "visibility",
        "tensor_parallel_size",
        "gpu_memory_gb",
    ]
    list_filter = ["task", "visibility", "source_kind"]
    search_fields = ["name", "source"]
    filter_horizontal = ["allowed_tenants"]
    readonly_fields = ["id", "manifest", "created_at", "updated_at"]
    inlines = [PriceInline]

    @admin.display(description="Manifest")
    def manifest(self, obj) -> str:
        """The manifest engines verify the files against (a read-only summary, not a form)."""
        current = ModelManifest.objects.current_for(obj) if obj.pk else None
        if current is None:
            return "none: engines start unverified (record one with manage.py record_manifest)"
        revision = f", revision {current.revision}" if current.revision else ""
        return (
            f"{current.digest} ({current.file_count} files, {current.total_bytes} bytes{revision}; "
            f"recorded {current.created_at:%Y-%m-%d %H:%M} UTC; a new one: manage.py record_manifest)"
        )

    # Saves and deletes go through the catalog, which republishes the gateway's copy after commit.
    def save_model(self, request, obj, form, change):
        catalog.save_model(model=obj)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        catalog.publish(model=form.instance)  # allowed tenants and prices added inline

    def delete_model(self, request, obj):
        catalog.delete_model(model=obj)

    def delete_queryset(self, request, queryset):
        for model in queryset:
            catalog.delete_model(model=model)


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "input_per_million",
        "output_per_million",
        "currency",
        "effective_from",
        "created_at",
    ]
    list_filter = ["currency", "model"]
    readonly_fields = ["created_at"]

    def has_change_permission(self, request, obj=None):
        return obj is None  # append-only: the add form only

    def save_model(self, request, obj, form, change):
        catalog.add_price(price=obj)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(LoraAdapter)
class LoraAdapterAdmin(admin.ModelAdmin):
    list_display = ["name", "base_model", "tenant", "source", "created_at"]
    search_fields = ["name", "tenant__name", "base_model__name"]
    autocomplete_fields = ["tenant"]
