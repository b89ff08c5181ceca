from django.contrib import admin

from economics import costs
from economics.models import CostRate


@admin.register(CostRate)
class CostRateAdmin(admin.ModelAdmin):
    list_display = ("__str__", "gpu_hour", "cpu_slot_hour", "updated_at")
    readonly_fields = ("updated_at",)

    def save_model(self, request, obj, form, change):
        costs.save_rate(rate=obj, request=request, actor=request.user)

    def delete_model(self, request, obj):
        costs.delete_rate(rate=obj, request=request, actor=request.user)

    def delete_queryset(self, request, queryset):
        for rate in queryset:
            costs.delete_rate(rate=rate, request=request, actor=request.user)
