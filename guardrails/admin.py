"""Django admin: staff manage platform-default policies (no tenant) and see every tenant's.

Saves and deletes go through ``guardrails.policies`` / the signals, so the mirror follows.
"""

from django.contrib import admin

from guardrails import mirror
from guardrails.models import ContentGovernance, ContentLog, GuardrailPolicy


@admin.register(GuardrailPolicy)
class GuardrailPolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "api_key", "enabled", "applies_to_prompts", "applies_to_completions"]
    list_filter = ["enabled", ("tenant", admin.EmptyFieldListFilter)]
    search_fields = ["name", "tenant__name", "tenant__slug"]
    raw_id_fields = ["tenant", "api_key", "created_by"]

    def save_model(self, request, obj, form, change):
        obj.full_clean()
        super().save_model(request, obj, form, change)
        if obj.tenant_id is None:
            from guardrails.tasks import resync_mirror

            resync_mirror.delay()
        else:
            mirror.publish_tenant(obj.tenant_id)


@admin.register(ContentGovernance)
class ContentGovernanceAdmin(admin.ModelAdmin):
    list_display = ["tenant", "log_content", "content_retention_days", "updated_at"]
    raw_id_fields = ["tenant"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        mirror.publish_tenant(obj.tenant_id)


@admin.register(ContentLog)
class ContentLogAdmin(admin.ModelAdmin):
    list_display = ["request_id", "tenant", "model", "endpoint", "status", "occurred_at"]
    list_filter = ["endpoint", "status"]
    search_fields = ["request_id", "tenant__slug"]
    readonly_fields = [f.name for f in ContentLog._meta.fields]

    def has_add_permission(self, request):
        return False
