"""Staff see every tenant's audit entries in the admin, filtered; nobody can add, edit or delete."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = (
        "seq",
        "created_at",
        "action",
        "actor_kind",
        "actor_label",
        "tenant_label",
        "summary",
        "ip",
    )
    list_filter = ("actor_kind", "action", "created_at", "tenant_label")
    search_fields = ("action", "actor_label", "tenant_label", "summary", "target_id", "ip")
    date_hierarchy = "created_at"
    ordering = ("-seq",)
    readonly_fields = [field.name for field in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
