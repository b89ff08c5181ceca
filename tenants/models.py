"""Users, tenants (organizations), memberships with roles, plans and API keys."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from contract import api_keys
from tenants.constants import TENANT_PERMISSIONS, KeyKind, Role, TenantStatus


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra):
        if not email:
            raise ValueError("An email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email, password=None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self._create_user(email, password, **extra)


class User(AbstractUser):
    """A person. Logs in with an email address; belongs to tenants through memberships."""

    username = None
    email = models.EmailField("email address", unique=True)
    # True by default: accounts made by operators (``create_tenant``, ``up``, the admin) and
    # existing rows are trusted. Self-service sign-up sets it False until the emailed link is
    # followed (tenants/verification.py); only then may the account create keys or join tenants.
    email_verified = models.BooleanField(
        default=True, help_text="The owner of this address followed a link sent to it (or staff made it)."
    )

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    def __str__(self) -> str:
        return self.email


class Plan(models.Model):
    """Limits a tenant is held to by the gateway. ``None`` means unlimited."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=100)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent_requests = models.PositiveIntegerField(null=True, blank=True)
    monthly_token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    monthly_spend_limit = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("0"))],
    )
    currency = models.CharField(max_length=3, default="USD")
    is_default = models.BooleanField(default=False, help_text="Given to new sign-ups.")
    # LoRA adapters a tenant may register (models_registry.adapters checks them).
    max_adapters = models.PositiveIntegerField(
        null=True, blank=True, default=5, help_text="LoRA adapters per tenant; empty: unlimited."
    )
    max_adapter_rank = models.PositiveSmallIntegerField(
        null=True, blank=True, default=64, help_text="Highest LoRA rank r allowed; empty: unlimited."
    )
    max_adapter_size_mb = models.PositiveIntegerField(
        null=True, blank=True, default=1024, help_text="Largest adapter in MB (10^6 bytes); empty: unlimited."
    )
    # Scheduling (contract.tiers): the band is the highest service tier the plan's tenants may use
    # (and what service_tier "auto" means); the weight is the tenant's share of a saturated model's
    # tokens against other tenants of the same band.
    priority_band = models.CharField(
        max_length=16,
        choices=[("priority", "Priority"), ("standard", "Standard"), ("best_effort", "Best effort")],
        default="standard",
        db_default="standard",
        help_text="Highest service tier: priority (any), standard (default, flex), best effort (flex only).",
    )
    fair_share_weight = models.PositiveSmallIntegerField(
        default=1,
        db_default=1,
        validators=[MinValueValidator(1)],
        help_text="Share of a saturated model's tokens against tenants in the same band.",
    )
    monthly_batch_token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens a month for /v1/batches lines; empty: unlimited."
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="one_default_plan"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def limits(self) -> dict[str, int | str | None]:
        """The plan as the gateway reads it from Redis."""
        return {
            "rpm": self.requests_per_minute,
            "tpm": self.tokens_per_minute,
            "concurrency": self.max_concurrent_requests,
            "monthly_tokens": self.monthly_token_budget,
            "monthly_spend": str(self.monthly_spend_limit) if self.monthly_spend_limit is not None else None,
            "currency": self.currency,
            "band": self.priority_band,
            "weight": self.fair_share_weight,
            "batch_tokens": self.monthly_batch_token_budget,
        }


class TenantQuerySet(models.QuerySet):
    def for_user(self, user) -> TenantQuerySet:
        if not user or not user.is_authenticated:
            return self.none()
        return self.filter(memberships__user=user).distinct()


# A data-residency label as nodes carry it and tenants require it (``eu``, ``us-east``, ``ch``).
residency_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$",
    "Lower-case letters, digits and '-' only (e.g. eu, us-east), at most 32 characters.",
)


class Tenant(models.Model):
    """An organization: owns keys, usage, invoices and private models."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=63, unique=True)
    status = models.CharField(max_length=16, choices=TenantStatus.choices, default=TenantStatus.ACTIVE)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    data_residency = models.CharField(
        max_length=32,
        blank=True,
        validators=[residency_validator],
        help_text="Nodes with this residency label are the only ones that run the tenant's private "
        "models; empty: any node.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = TENANT_PERMISSIONS

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == TenantStatus.ACTIVE


class MembershipQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> MembershipQuerySet:
        return self.filter(tenant=tenant)


class Membership(models.Model):
    """A user's role in a tenant. Roles are enforced through guardian object permissions."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_user_tenant")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"


class ApiKeyQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> ApiKeyQuerySet:
        return self.filter(tenant=tenant)

    def usable(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))


class ApiKey(models.Model):
    """A tenant's key: ``<prefix><lookup id>_<secret>``; only HMAC(pepper, secret) is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    kind = models.CharField(max_length=16, choices=KeyKind.choices, default=KeyKind.INFERENCE)
    name = models.CharField(max_length=100)
    lookup_id = models.CharField(max_length=32, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    pepper_id = models.CharField(max_length=32, editable=False)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="created_api_keys"
    )
    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text="Model names this key may use; empty means all the tenant may use.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…)"

    def clean(self) -> None:
        if not isinstance(self.allowed_models, list) or not all(
            isinstance(name, str) and name for name in self.allowed_models
        ):
            raise ValidationError({"allowed_models": "Must be a list of model names."})

    @property
    def display_prefix(self) -> str:
        """What the console shows: the visible prefix plus the lookup id (not secret)."""
        return api_keys.display_prefix(kind=self.kind, lookup_id=self.lookup_id)

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return not self.is_revoked and not self.is_expired

    @property
    def status(self) -> str:
        if self.is_revoked:
            return "revoked"
        if self.is_expired:
            return "expired"
        return "active"


class InvitationQuerySet(models.QuerySet):
    def pending(self) -> InvitationQuerySet:
        return self.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now())


class Invitation(models.Model):
    """An emailed invitation to join a tenant with a role. Only a hash of its token is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.email} → {self.tenant} ({self.role})"

    @property
    def is_pending(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()
