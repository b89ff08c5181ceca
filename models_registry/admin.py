"""Django admin for staff: models, prices, LoRA adapters.

Staff make a tenant's adapter public (every tenant may call it) or add it a new price here; edits
and deletes go through ``models_registry.adapters``, which republishes the gateway's copy.

Deployments are administered in ``provisioning/admin.py``, next to the workers that serve them.
"""

from django.contrib import admin
from django.db import transaction

from models_registry import adapters, catalog
from models_registry.models import LoraAdapter, Model, ModelManifest, Price


class PriceInline(admin.TabularInline):
    model = Price
    extra = 0
    can_delete = False
    fields = [
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "flex_percent",
        "priority_percent",
        "batch_percent",
        "currency",
        "effective_from",
        "created_at",
    ]
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
        "tool_call_parser",
    ]
    list_filter = ["task", "visibility", "source_kind", "tool_call_parser"]
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
        "adapter",
        "input_per_million",
        "output_per_million",
        "cached_input_price",
        "tier_percents",
        "currency",
        "effective_from",
        "created_at",
    ]
    list_filter = ["currency", "model"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["adapter"]

    def has_change_permission(self, request, obj=None):
        return obj is None  # append-only: the add form only

    def save_model(self, request, obj, form, change):
        catalog.add_price(price=obj)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Cached input / M")
    def cached_input_price(self, obj):
        """The row's own cached-input price, or the fraction of its input price it falls back to."""
        own = obj.cached_input_per_million
        return own if own is not None else f"{obj.cached_input_price} (default)"

    @admin.display(description="Flex / priority / batch %")
    def tier_percents(self, obj) -> str:
        """The percent billed per service tier; "(default)" where the row does not set its own."""
        parts = []
        for tier in catalog.PERCENT_TIERS:
            own = getattr(obj, f"{tier}_percent") is not None
            parts.append(f"{obj.tier_percent(tier).normalize():f}{'' if own else ' (default)'}")
        return " / ".join(parts)


class AdapterPriceInline(PriceInline):
    fk_name = "adapter"


@admin.register(LoraAdapter)
class LoraAdapterAdmin(admin.ModelAdmin):
    list_display = [
        "served_name",
        "base_model",
        "tenant",
        "status",
        "visibility",
        "rank",
        "size_bytes",
        "created_at",
    ]
    list_filter = ["status", "visibility", "source_kind"]
    search_fields = ["served_name", "name", "tenant__name", "base_model__name"]
    autocomplete_fields = ["tenant"]
    readonly_fields = [
        "id",
        "tenant",
        "name",
        "served_name",
        "source_kind",
        "source",
        "revision",
        "local_path",
        "rank",
        "size_bytes",
        "status",
        "status_reason",
        "created_at",
        "updated_at",
        "deleted_at",
    ]
    inlines = [AdapterPriceInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant", "base_model")

    def has_add_permission(self, request):
        return False  # tenants register adapters (console, API): the checks and the fetch are there

    def save_model(self, request, obj, form, change):
        adapters.save_adapter(adapter=obj)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        adapter = form.instance
        transaction.on_commit(lambda: adapters.publish(adapter))  # prices added inline

    def delete_model(self, request, obj):
        adapters.delete_adapter(adapter=obj)

    def delete_queryset(self, request, queryset):
        for adapter in queryset:
            adapters.delete_adapter(adapter=adapter)
