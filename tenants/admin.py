"""Django admin for staff: users, plans, tenants, memberships and API keys.

Saves go through the service functions, which mirror to Redis after the commit. Deletes (of a
tenant, user, membership or key, one by one or as a queryset) are caught by ``tenants.signals``,
since the ORM's cascades reach rows no service sees.
"""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import ValidationError
from guardian.admin import GuardedModelAdmin

from tenants import accounts, keys, plans
from tenants import membership as memberships
from tenants.models import ApiKey, Invitation, Membership, Plan, Tenant, User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "first_name", "last_name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "first_name", "last_name"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent_requests",
        "monthly_token_budget",
        "monthly_spend_limit",
        "currency",
        "max_adapters",
        "max_adapter_rank",
        "priority_band",
        "fair_share_weight",
        "monthly_batch_token_budget",
        "is_default",
    ]
    list_filter = ["priority_band"]
    prepopulated_fields = {"slug": ["name"]}
    fieldsets = (
        (None, {"fields": ("name", "slug", "is_default", "currency")}),
        (
            "Limits",
            {
                "fields": (
                    "requests_per_minute",
                    "tokens_per_minute",
                    "max_concurrent_requests",
                    "monthly_token_budget",
                    "monthly_spend_limit",
                )
            },
        ),
        ("Adapters", {"fields": ("max_adapters", "max_adapter_rank", "max_adapter_size_mb")}),
        (
            "Scheduling and service tiers",
            {
                "description": "When a model is saturated, requests are served by band (priority, "
                "then standard, then best effort) and, within a band, by tokens in proportion to "
                "the weight. The band is also the highest service_tier the plan's tenants may ask for.",
                "fields": ("priority_band", "fair_share_weight", "monthly_batch_token_budget"),
            },
        ),
    )

    def save_model(self, request, obj, form, change):
        plans.save_plan(plan=obj)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    readonly_fields = ["created_at"]


@admin.register(Tenant)
class TenantAdmin(GuardedModelAdmin):
    list_display = ["name", "slug", "status", "plan", "created_at"]
    list_filter = ["status", "plan"]
    search_fields = ["name", "slug"]
    readonly_fields = ["id", "created_at"]
    inlines = [MembershipInline]
    actions = ["suspend", "activate"]

    def save_model(self, request, obj, form, change):
        accounts.update_tenant(tenant=obj)

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        # Memberships edited inline still get their role's object permissions.
        for membership in Membership.objects.filter(tenant=form.instance):
            accounts.sync_role_permissions(membership)

    @admin.action(description="Suspend selected tenants (the gateway refuses them)")
    def suspend(self, request, queryset):
        from billing import payments  # staff actions go through the one module that knows dunning

        for tenant in queryset:
            payments.suspend_tenant(tenant=tenant, user=request.user)

    @admin.action(description="Activate selected tenants")
    def activate(self, request, queryset):
        from billing import payments

        for tenant in queryset:
            payments.resume_tenant(tenant=tenant, user=request.user)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "tenant__name", "tenant__slug"]
    autocomplete_fields = ["user", "tenant"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        accounts.sync_role_permissions(obj)

    def delete_model(self, request, obj):
        # As in the console: last-owner check, the person's keys revoked, the admins told.
        try:
            memberships.remove_member(tenant=obj.tenant, user=obj.user, acting_user=request.user)
        except ValidationError as exc:
            self.message_user(request, f"{obj.user.email}: {' '.join(exc.messages)}", messages.ERROR)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("tenant", "user"):
            self.delete_model(request, membership)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "display_prefix",
        "tenant",
        "kind",
        "status",
        "last_used_at",
        "expires_at",
        "created_at",
    ]
    list_filter = ["kind", "revoked_at"]
    search_fields = ["name", "lookup_id", "tenant__name", "tenant__slug"]
    readonly_fields = [
        "id",
        "tenant",
        "kind",
        "lookup_id",
        "secret_hash",
        "pepper_id",
        "created_by",
        "last_used_at",
        "revoked_at",
        "created_at",
    ]
    fields = ["name", "allowed_models", "expires_at", *readonly_fields]
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Keys are created where their secret can be shown once: console, API or create_api_key.
        return False

    def save_model(self, request, obj, form, change):
        keys.update_api_key(api_key=obj)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for api_key in queryset:
            keys.revoke_api_key(api_key=api_key)
        messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = [
        "email",
        "tenant",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    ]
    list_filter = ["role"]
    search_fields = ["email", "tenant__name"]
    readonly_fields = ["token_hash", "invited_by", "accepted_by", "accepted_at", "created_at"]

    def has_add_permission(self, request):
        return False  # invitations are sent from the console or API, which email the link
