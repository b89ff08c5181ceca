"""Django admin for staff: nodes, GPUs, workers (states, pending reasons, events, log tail).

The deployment admin lives here too, not in ``models_registry``: its columns count workers and
its actions are operator actions (``provisioning.operations``), and provisioning depends on the
registry, never the other way round.
"""

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils.html import format_html

from models_registry.models import Deployment
from provisioning import agent, operations
from provisioning.constants import HOLDING_STATES, LIVE_STATES, NodeStatus, WorkerState
from provisioning.models import Gpu, Node, Worker, WorkerEvent

VIA = "admin"


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    can_delete = False
    readonly_fields = [
        "index",
        "name",
        "uuid",
        "memory_total_mb",
        "memory_used_mb",
        "utilization",
        "updated_at",
    ]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "address",
        "backend",
        "status",
        "residency",
        "gpu_count",
        "cpu_slots",
        "busy_workers",
        "last_heartbeat",
    ]
    list_filter = ["status", "backend", "residency"]
    search_fields = ["name", "address"]
    readonly_fields = ["id", "queue", "last_heartbeat", "created_at"]
    inlines = [GpuInline]
    actions = ["cordon", "uncordon"]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_gpus=Count("gpus", distinct=True),
                n_busy=Count("workers", filter=Q(workers__state__in=HOLDING_STATES), distinct=True),
            )
        )

    @admin.display(description="GPUs", ordering="n_gpus")
    def gpu_count(self, obj):
        return obj.n_gpus

    @admin.display(description="workers", ordering="n_busy")
    def busy_workers(self, obj):
        return obj.n_busy

    @admin.action(description="Cordon (place no new replicas)")
    def cordon(self, request, queryset):
        queryset.update(status=NodeStatus.CORDONED)

    @admin.action(description="Uncordon")
    def uncordon(self, request, queryset):
        queryset.filter(status=NodeStatus.CORDONED).update(status=NodeStatus.READY)


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ["__str__", "name", "memory_total_mb", "memory_used_mb", "utilization", "updated_at"]
    list_filter = ["node"]
    readonly_fields = [f.name for f in Gpu._meta.fields]

    def has_add_permission(self, request):
        return False


class WorkerEventInline(admin.TabularInline):
    model = WorkerEvent
    extra = 0
    can_delete = False
    fields = ["at", "kind", "message", "actor"]
    readonly_fields = fields
    ordering = ["-at", "-id"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "deployment",
        "state",
        "node",
        "gpu_indices",
        "cpu_slot",
        "url",
        "restart_count",
        "pending_reason",
        "failure_reason_short",
        "state_changed_at",
    ]
    list_filter = ["state", "node", "deployment__model"]
    search_fields = ["id", "deployment__model__name", "node__name", "pod_name"]
    list_select_related = ["deployment__model", "node"]
    # api_key is deliberately absent: never shown, in lists or forms.
    readonly_fields = [
        "id",
        "deployment",
        "node",
        "state",
        "gpu_indices",
        "cpu_slot",
        "port",
        "url",
        "pid",
        "pod_name",
        "restart_count",
        "crashed",
        "exit_code",
        "failure_reason",
        "pending_reason",
        "start_after",
        "created_at",
        "state_changed_at",
        "placed_at",
        "ready_at",
        "drain_started_at",
        "stop_requested_at",
        "finished_at",
        "log_path",
        "log_tail",
    ]
    fields = readonly_fields
    inlines = [WorkerEventInline]
    actions = ["drain_workers"]

    def has_add_permission(self, request):
        return False  # the reconciler creates workers from deployments

    @admin.display(description="id")
    def short_id(self, obj):
        return str(obj.id)[:8]

    @admin.display(description="failure")
    def failure_reason_short(self, obj):
        return (obj.failure_reason or "")[:80]

    @admin.display(description="log (last 200 lines)")
    def log_tail(self, obj):
        if not obj.log_path:
            return "—"
        text = agent.log_tail(obj.log_path)
        if not text:
            return f"{obj.log_path} is not readable from this host"
        return format_html('<pre style="max-height:40em;overflow:auto;white-space:pre-wrap">{}</pre>', text)

    @admin.action(description="Drain selected workers (each is replaced while still wanted)")
    def drain_workers(self, request, queryset):
        count = sum(
            operations.drain(worker=worker, actor=request.user, via=VIA)
            for worker in queryset.select_related("deployment__model")
        )
        messages.success(request, f"{count} worker(s) draining or stopped.")


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
        "max_loras",
        "last_active_at",
    ]
    list_filter = ["engine"]
    search_fields = ["model__name"]
    readonly_fields = ["id", "last_active_at", "low_load_since", "created_at"]
    actions = ["scale_up", "scale_down", "scale_to_zero", "restart"]

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

    def _scale_by(self, request, queryset, step: int) -> None:
        for deployment in queryset:
            operations.scale(
                deployment=deployment,
                replicas=deployment.desired_replicas + step,
                actor=request.user,
                via=VIA,
            )

    @admin.action(description="Scale up by one replica")
    def scale_up(self, request, queryset):
        self._scale_by(request, queryset, 1)
        messages.success(request, "Scaled up; the reconciler starts replicas within seconds.")

    @admin.action(description="Scale down by one replica")
    def scale_down(self, request, queryset):
        self._scale_by(request, queryset, -1)
        messages.success(request, "Scaled down; surplus replicas drain before they stop.")

    @admin.action(description="Scale to zero")
    def scale_to_zero(self, request, queryset):
        for deployment in queryset:
            operations.scale_to_zero(deployment=deployment, actor=request.user, via=VIA)
        messages.success(
            request, "Scaled to zero: workers leave routing, finish in-flight requests, then stop."
        )

    @admin.action(description="Restart all replicas (each drains; fresh ones replace them)")
    def restart(self, request, queryset):
        count = sum(
            operations.restart(deployment=deployment, actor=request.user, via=VIA) for deployment in queryset
        )
        messages.success(request, f"{count} worker(s) draining; fresh replicas replace them.")


@admin.register(WorkerEvent)
class WorkerEventAdmin(admin.ModelAdmin):
    list_display = ["at", "kind", "worker", "deployment", "message", "actor"]
    list_filter = ["kind"]
    search_fields = ["message", "worker__id"]
    list_select_related = ["worker", "deployment__model", "actor"]
    readonly_fields = ["at", "kind", "worker", "deployment", "message", "actor"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
