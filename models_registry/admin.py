"""Django admin for staff: models, deployments (with scale/drain/restart), prices, LoRA adapters."""

from django.contrib import admin, messages
from django.db.models import Count, Q

from models_registry import catalog
from models_registry.models import Deployment, LoraAdapter, Model, Price
from workers import reconciler
from workers.constants import LIVE_STATES, WorkerState


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
    readonly_fields = ["id", "created_at", "updated_at"]
    inlines = [PriceInline]

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


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = [
        "model",
        "engine",
        "desired_replicas",
        "ready_workers",
        "live_workers",
        "min_replicas",
        "max_replicas",
        "target_concurrency",
        "last_active_at",
    ]
    list_filter = ["engine"]
    search_fields = ["model__name"]
    readonly_fields = ["id", "last_active_at", "low_load_since", "created_at"]
    actions = ["scale_up", "scale_down", "drain", "restart"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("model")
            .annotate(
                n_ready=Count("workers", filter=Q(workers__state=WorkerState.READY)),
                n_live=Count("workers", filter=Q(workers__state__in=LIVE_STATES)),
            )
        )

    @admin.display(description="ready", ordering="n_ready")
    def ready_workers(self, obj):
        return obj.n_ready

    @admin.display(description="live", ordering="n_live")
    def live_workers(self, obj):
        return obj.n_live

    @admin.action(description="Scale up by one replica")
    def scale_up(self, request, queryset):
        for deployment in queryset:
            reconciler.scale(
                deployment=deployment,
                replicas=deployment.desired_replicas + 1,
                reason=f"admin {request.user}",
            )
        messages.success(request, "Scaled up; the reconciler starts replicas within seconds.")

    @admin.action(description="Scale down by one replica")
    def scale_down(self, request, queryset):
        for deployment in queryset:
            reconciler.scale(
                deployment=deployment,
                replicas=max(0, deployment.desired_replicas - 1),
                reason=f"admin {request.user}",
            )
        messages.success(request, "Scaled down; surplus replicas drain before they stop.")

    @admin.action(description="Drain (scale to zero)")
    def drain(self, request, queryset):
        for deployment in queryset:
            reconciler.scale(deployment=deployment, replicas=0, reason=f"drained by admin {request.user}")
        messages.success(request, "Draining: workers leave routing, finish in-flight requests, then stop.")

    @admin.action(description="Restart all replicas (rolling through drain)")
    def restart(self, request, queryset):
        count = sum(reconciler.restart_deployment(deployment=deployment) for deployment in queryset)
        messages.success(request, f"{count} worker(s) draining; fresh replicas replace them.")


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
