"""The model registry: what can be served (Model, LoraAdapter), how (Deployment) and at what price.

Visibility: a public model is usable by every tenant; a private one only by the tenants listed in
``Model.allowed_tenants``. Guardian object permissions attach to users and groups, not tenants,
and a tenant's API keys act for the tenant, so the grant lives on the tenant itself (an M2M) and
``Model.objects.visible_to(tenant)`` is the one place that applies it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from models_registry.constants import (
    DEFAULT_CURRENCY,
    REASONING_PARSER_CHOICES,
    TOOL_CALL_PARSER_CHOICES,
    AdapterSourceKind,
    AdapterStatus,
    Engine,
    SignatureKind,
    SourceKind,
    Task,
    Visibility,
)

model_name_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9._-]{0,99}$",
    "Lower-case letters, digits, '.', '_' and '-' only, starting with a letter or digit.",
)


class ModelQuerySet(models.QuerySet):
    def visible_to(self, tenant) -> ModelQuerySet:
        """Public models plus the private ones granted to ``tenant``; nothing without a tenant."""
        if tenant is None:
            return self.none()
        granted = Model.allowed_tenants.through.objects.filter(tenant=tenant).values("model_id")
        return self.filter(Q(visibility=Visibility.PUBLIC) | Q(pk__in=granted))

    def with_current_price(self, at: datetime | None = None) -> ModelQuerySet:
        """Annotate ``price_input``/``price_output``/``price_cached_own`` (the row's own cached-input
        price, None: a fraction of input)/``price_currency``/``price_from``: the price in
        effect at ``at`` (now), in the same query (the API's model list and the console use it)."""
        current = Price.objects.filter(
            model=OuterRef("pk"), effective_from__lte=at or timezone.now()
        ).order_by("-effective_from")
        return self.annotate(
            price_input=Subquery(current.values("input_per_million")[:1]),
            price_output=Subquery(current.values("output_per_million")[:1]),
            price_cached_own=Subquery(current.values("cached_input_per_million")[:1]),
            price_flex_percent=Subquery(current.values("flex_percent")[:1]),
            price_priority_percent=Subquery(current.values("priority_percent")[:1]),
            price_batch_percent=Subquery(current.values("batch_percent")[:1]),
            price_currency=Subquery(current.values("currency")[:1]),
            price_from=Subquery(current.values("effective_from")[:1]),
        )

    def with_manifest_digest(self) -> ModelQuerySet:
        """Annotate ``manifest_digest``: the digest of the current manifest (None without one)."""
        latest = ModelManifest.objects.filter(model=OuterRef("pk")).order_by("-created_at")
        return self.annotate(manifest_digest=Subquery(latest.values("digest")[:1]))


class Model(models.Model):
    """A servable model: where its weights come from and how an engine must run it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(
        max_length=100,
        unique=True,
        validators=[model_name_validator],
        help_text="Public name clients send as 'model', e.g. llama-3.1-8b-instruct.",
    )
    source_kind = models.CharField(max_length=8, choices=SourceKind.choices, default=SourceKind.HUGGINGFACE)
    source = models.CharField(max_length=500, help_text="Hugging Face repo id, or an absolute local folder.")
    revision = models.CharField(max_length=100, blank=True, help_text="Git revision (HF only); empty = main.")
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.CHAT)
    context_length = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the model's own.")
    dtype = models.CharField(max_length=16, blank=True, help_text="e.g. bfloat16; empty: auto.")
    quantization = models.CharField(max_length=32, blank=True, help_text="e.g. awq, fp8; empty: none.")
    gpu_memory_gb = models.PositiveIntegerField(
        default=0, help_text="GPU memory one replica needs in total (split over its GPUs)."
    )
    tensor_parallel_size = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    engine_args = models.JSONField(
        default=list, blank=True, help_text='Extra engine arguments, e.g. ["--max-num-seqs", "64"].'
    )
    tool_call_parser = models.CharField(
        max_length=32,
        blank=True,
        choices=TOOL_CALL_PARSER_CHOICES,
        help_text="vLLM's tool-call parser for this model's chat template (e.g. hermes for Qwen, "
        "llama3_json for Llama 3.1); empty: no automatic tool choice on vLLM workers.",
    )
    reasoning_parser = models.CharField(
        max_length=32,
        blank=True,
        choices=REASONING_PARSER_CHOICES,
        help_text="vLLM's reasoning parser (e.g. qwen3, deepseek_r1); empty: none.",
    )
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.PUBLIC)
    adapter_surcharge_percent = models.DecimalField(
        max_digits=7,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
        help_text="A new LoRA adapter on this model is priced at this model's price plus this percentage.",
    )
    # OpenSSF model signing (integrity.signing): engines start only if model.sig in the folder verifies.
    signature = models.CharField(
        max_length=8,
        choices=SignatureKind.choices,
        blank=True,
        help_text="Require a model-signing signature (model.sig in the model's folder); empty: none.",
    )
    signature_public_key = models.TextField(
        blank=True, help_text="Key signatures: the signer's elliptic-curve public key (PEM)."
    )
    signature_identity = models.CharField(
        max_length=255, blank=True, help_text="Sigstore signatures: the signer's identity (e.g. an e-mail)."
    )
    signature_issuer = models.CharField(
        max_length=255,
        blank=True,
        help_text="Sigstore signatures: the identity's OIDC issuer, e.g. https://accounts.google.com.",
    )
    allowed_tenants = models.ManyToManyField(
        "tenants.Tenant",
        blank=True,
        related_name="private_models",
        help_text="Tenants that may use this model when it is private.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def price_cached_input(self) -> Decimal | None:
        """With ``with_current_price``: the cached-input price in effect (its own or the default
        fraction of the input price); None without a price."""
        price_input = getattr(self, "price_input", None)
        if price_input is None:
            return None
        own = getattr(self, "price_cached_own", None)
        return Price(input_per_million=price_input, cached_input_per_million=own).cached_input_price

    def clean(self) -> None:
        if not isinstance(self.engine_args, list) or not all(isinstance(a, str) for a in self.engine_args):
            raise ValidationError({"engine_args": "Must be a JSON list of strings."})
        if self.source_kind == SourceKind.LOCAL and not self.source.startswith("/"):
            raise ValidationError({"source": "A local source must be an absolute path."})
        if self.signature == SignatureKind.KEY and "BEGIN PUBLIC KEY" not in self.signature_public_key:
            raise ValidationError({"signature_public_key": "Paste the signer's public key in PEM form."})
        if self.signature == SignatureKind.SIGSTORE and not (
            self.signature_identity and self.signature_issuer
        ):
            raise ValidationError(
                {"signature_identity": "Sigstore signatures need the identity and its issuer."}
            )

    def signature_policy(self):
        """What ``integrity.signing.verify_signature`` checks; None when no signature is required."""
        if not self.signature:
            return None
        from integrity.signing import SignaturePolicy

        return SignaturePolicy(
            kind=self.signature,
            public_key_pem=self.signature_public_key,
            identity=self.signature_identity,
            issuer=self.signature_issuer,
        )

    @property
    def gpu_memory_mb_per_gpu(self) -> int:
        return -(-self.gpu_memory_gb * 1024 // max(1, self.tensor_parallel_size))

    def current_price(self, at: datetime | None = None) -> Price | None:
        return Price.objects.in_effect(self, at)


class Deployment(models.Model):
    """Desired state for serving a model: the reconciler makes the Worker rows match it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="deployments")
    engine = models.CharField(max_length=8, choices=Engine.choices, default=Engine.VLLM)
    min_replicas = models.PositiveSmallIntegerField(default=0)
    max_replicas = models.PositiveSmallIntegerField(default=1)
    desired_replicas = models.PositiveSmallIntegerField(default=1)
    target_concurrency = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(1)], help_text="Concurrent requests per replica to aim for."
    )
    idle_seconds = models.PositiveIntegerField(
        default=900, help_text="With min replicas 0: scale to zero after this long without load."
    )
    node_selector = models.JSONField(
        default=dict, blank=True, help_text='Node labels a replica needs, e.g. {"gpu": "h100"}.'
    )
    # LoRA (engine flags --max-loras, --max-cpu-loras, --max-lora-rank): adapters load at run time.
    max_loras = models.PositiveSmallIntegerField(
        default=0, help_text="LoRA adapters served in one batch; 0 turns LoRA serving off."
    )
    max_cpu_loras = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="LoRA adapters kept loaded per replica (least recently used evicted); empty: max LoRAs.",
    )
    max_lora_rank = models.PositiveSmallIntegerField(
        default=16,
        choices=[(r, str(r)) for r in (1, 8, 16, 32, 64, 128, 256, 320, 512)],
        help_text="The largest adapter rank a replica accepts.",
    )
    last_active_at = models.DateTimeField(null=True, blank=True, editable=False)
    low_load_since = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(min_replicas__lte=F("max_replicas")), name="deployment_min_le_max"
            ),
            models.CheckConstraint(
                condition=Q(desired_replicas__lte=F("max_replicas")), name="deployment_desired_le_max"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} ({self.engine})"

    def clean(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValidationError({"min_replicas": "Must not exceed max replicas."})
        if self.desired_replicas > self.max_replicas:
            raise ValidationError({"desired_replicas": "Must not exceed max replicas."})
        if not isinstance(self.node_selector, dict):
            raise ValidationError({"node_selector": "Must be a JSON object of label: value."})
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValidationError({"max_cpu_loras": "Must be at least max LoRAs."})

    @property
    def gpus_per_replica(self) -> int:
        return self.model.tensor_parallel_size if self.engine == Engine.VLLM else 0


class PriceQuerySet(models.QuerySet):
    def in_effect(self, priced, at: datetime | None = None) -> Price | None:
        """The price row that applies to ``priced`` (a Model or a LoraAdapter) at ``at`` (now)."""
        at = at or timezone.now()
        owner = {"adapter": priced} if isinstance(priced, LoraAdapter) else {"model": priced}
        return self.filter(**owner, effective_from__lte=at).order_by("-effective_from").first()

    def for_served_name(self, served_name) -> PriceQuerySet:
        """The prices of whatever is served as ``served_name``: a model's name, or an adapter's
        ``<tenant slug>/<name>`` (``served_name`` may be an ``OuterRef``). Model names never hold
        a ``/``, so the two never collide."""
        return self.filter(Q(model__name=served_name) | Q(adapter__served_name=served_name))


# The highest percent a price row may set for a service tier (ten times the default price).
MAX_TIER_PERCENT = 1000

_PERCENT: dict = {
    "max_digits": 6,
    "decimal_places": 2,
    "null": True,
    "blank": True,
    "validators": [MinValueValidator(0)],
}


class Price(models.Model):
    """Per-million-token prices from ``effective_from`` on. Append-only: a new row supersedes.

    A price belongs to a model or to a LoRA adapter (exactly one of the two): usage is metered and
    billed under the served name, and ``PriceQuerySet.for_served_name`` finds either.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="prices", null=True, blank=True)
    adapter = models.ForeignKey(
        "LoraAdapter", on_delete=models.PROTECT, related_name="prices", null=True, blank=True
    )
    input_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(0)]
    )
    output_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(0)]
    )
    # Prompt tokens the engine served from its prefix cache; empty: the input price times
    # BERTH_CACHED_INPUT_FRACTION (``cached_input_price``).
    cached_input_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        validators=[MinValueValidator(0)],
        null=True,
        blank=True,
        help_text="Per million cached input tokens (prefix-cache hits). Empty: the input price "
        "times BERTH_CACHED_INPUT_FRACTION.",
    )
    # Percent of these prices billed for each service tier (contract.tiers); empty: the default
    # (flex 50, priority 200, batch 50; BERTH_TIER_PRICE_PERCENT overrides them).
    flex_percent = models.DecimalField(
        **_PERCENT, help_text="Percent billed for service_tier flex; empty: default."
    )
    priority_percent = models.DecimalField(
        **_PERCENT, help_text="Percent billed for service_tier priority; empty: default."
    )
    batch_percent = models.DecimalField(
        **_PERCENT, help_text="Percent billed for /v1/batches lines; empty: default."
    )
    currency = models.CharField(max_length=3, default=DEFAULT_CURRENCY)
    effective_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PriceQuerySet.as_manager()

    class Meta:
        ordering = ["model__name", "adapter__served_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="one_price_per_model_instant"),
            models.UniqueConstraint(
                fields=["adapter", "effective_from"], name="one_price_per_adapter_instant"
            ),
            models.CheckConstraint(
                condition=Q(model__isnull=False, adapter__isnull=True)
                | Q(model__isnull=True, adapter__isnull=False),
                name="price_for_model_xor_adapter",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.served_name} {self.input_per_million}/{self.output_per_million} {self.currency}"

    def save(self, *args, **kwargs):
        # Invoices must be reproducible from history: never rewrite a price, add a newer one.
        if not self._state.adding:
            raise ValidationError("Prices are never edited; add a new price with a later effective date.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValidationError("Prices are never deleted; add a new price that supersedes this one.")

    def clean(self) -> None:
        # Neither is caught by the check constraint (an admin inline sets its parent after this).
        if self.model_id is not None and self.adapter_id is not None:
            raise ValidationError("A price is for a model or for a LoRA adapter, not both.")
        wrong = {
            name: f"A percent from 0 to {MAX_TIER_PERCENT} (empty: the default)."
            for name in ("flex_percent", "priority_percent", "batch_percent")
            if getattr(self, name) is not None and not 0 <= Decimal(getattr(self, name)) <= MAX_TIER_PERCENT
        }
        if wrong:
            raise ValidationError(wrong)

    @property
    def served_name(self) -> str:
        return self.adapter.served_name if self.adapter_id else str(self.model)

    @property
    def cached_input_price(self) -> Decimal:
        """Per million cached input tokens: the row's own, else the input price times
        ``BERTH_CACHED_INPUT_FRACTION`` (to the field's six places)."""
        if self.cached_input_per_million is not None:
            return Decimal(self.cached_input_per_million)
        fraction = settings.CACHED_INPUT_FRACTION
        return (Decimal(self.input_per_million) * fraction).quantize(Decimal("0.000001"))

    def tier_percent(self, tier: str) -> Decimal:
        """Percent of this row's prices billed for ``tier`` (``contract.tiers``): the row's own,
        else ``BERTH_TIER_PRICE_PERCENT``'s; the default tier is always 100."""
        own = {"flex": self.flex_percent, "priority": self.priority_percent, "batch": self.batch_percent}.get(
            tier
        )
        if own is not None:
            return Decimal(own)
        return Decimal(settings.TIER_PRICE_PERCENT.get(tier, 100))


class LoraAdapterQuerySet(models.QuerySet):
    def live(self) -> LoraAdapterQuerySet:
        """Every adapter but the deleted ones (kept for their prices: usage not yet invoiced)."""
        return self.exclude(status=AdapterStatus.DELETED)

    def ready(self) -> LoraAdapterQuerySet:
        return self.filter(status=AdapterStatus.READY)

    def of_tenant(self, tenant) -> LoraAdapterQuerySet:
        """``tenant``'s own adapters (not the public ones of others); nothing without a tenant."""
        if tenant is None:
            return self.none()
        return self.live().filter(tenant=tenant)

    def usable_by(self, tenant) -> LoraAdapterQuerySet:
        """Ready adapters ``tenant`` may call: its own and the public ones."""
        if tenant is None:
            return self.none()
        return self.ready().filter(Q(tenant=tenant) | Q(visibility=Visibility.PUBLIC))


class LoraAdapter(models.Model):
    """A LoRA adapter on a base model, owned by one tenant and served as ``<tenant slug>/<name>``.

    It is private to its tenant unless staff make it public. Deleting one marks it ``deleted``
    rather than removing the row: its prices must outlive it until its usage is invoiced, and a
    new adapter may take the name at once (the uniqueness holds among live adapters only).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="lora_adapters")
    base_model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="lora_adapters")
    name = models.CharField(
        max_length=100, validators=[model_name_validator], help_text="Served as <tenant slug>/<name>."
    )
    served_name = models.CharField(
        max_length=170, editable=False, db_index=True, default="", help_text="What clients send as 'model'."
    )
    source_kind = models.CharField(
        max_length=8, choices=AdapterSourceKind.choices, default=AdapterSourceKind.HUB
    )
    source = models.CharField(
        max_length=500, help_text="Hugging Face repo id, absolute folder or https:// URL of a folder."
    )
    revision = models.CharField(
        max_length=100, blank=True, help_text="Git revision (Hub only); empty = main."
    )
    local_path = models.CharField(
        max_length=500, blank=True, editable=False, help_text="Where its files are on this machine."
    )
    rank = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="LoRA rank r (adapter_config.json)."
    )
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    visibility = models.CharField(
        max_length=8,
        choices=Visibility.choices,
        default=Visibility.PRIVATE,
        help_text="Private: its tenant only. Public (staff only): every tenant may call it.",
    )
    status = models.CharField(max_length=8, choices=AdapterStatus.choices, default=AdapterStatus.PENDING)
    status_reason = models.TextField(blank=True, help_text="Why it failed, for the tenant.")
    # Its files when it became ready (integrity.manifest_for_folder): shown, published, checked.
    manifest_digest = models.CharField(
        max_length=71, blank=True, editable=False, help_text="sha256:<hex> of the manifest's canonical JSON."
    )
    manifest_revision = models.CharField(
        max_length=100,
        blank=True,
        editable=False,
        help_text="The manifest's revision: the resolved Hub commit.",
    )
    manifest_files = models.JSONField(default=list, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = LoraAdapterQuerySet.as_manager()

    class Meta:
        ordering = ["served_name", "created_at"]
        verbose_name = "LoRA adapter"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "name"],
                condition=~Q(status=AdapterStatus.DELETED),
                name="one_live_adapter_name_per_tenant",
            ),
            models.UniqueConstraint(
                fields=["served_name"],
                condition=~Q(status=AdapterStatus.DELETED),
                name="one_live_adapter_per_served_name",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.served_name or self.name} on {self.base_model}"

    def save(self, *args, **kwargs):
        if not self.served_name or self._state.adding:
            self.served_name = f"{self.tenant.slug}/{self.name}"
        super().save(*args, **kwargs)

    @property
    def engine_source(self) -> str:
        """What an engine's load call takes: the fetched folder when there is one, else the source."""
        return self.local_path or self.source

    def current_price(self, at: datetime | None = None) -> Price | None:
        return Price.objects.in_effect(self, at)


class ModelManifestQuerySet(models.QuerySet):
    def current_for(self, model) -> ModelManifest | None:
        """The manifest the model's files are verified against: the latest one recorded."""
        return self.filter(model=model).order_by("-created_at").first()


class ModelManifest(models.Model):
    """What a model's folder held when it was pulled or registered (``integrity.manifest``).

    Append-only: pulling again, or ``manage.py record_manifest`` after a deliberate change of the
    files, adds a newer row, and the latest is the one node agents verify against before starting
    an engine. ``files`` is the manifest's list as ``integrity.Manifest.as_dict`` writes it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="manifests")
    digest = models.CharField(max_length=71, help_text="sha256:<hex> of the manifest's canonical JSON.")
    source = models.CharField(max_length=500)
    revision = models.CharField(
        max_length=100, blank=True, help_text="Resolved Hub commit; empty for folders."
    )
    files = models.JSONField(default=list)
    file_count = models.PositiveIntegerField(default=0)
    total_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = ModelManifestQuerySet.as_manager()

    class Meta:
        ordering = ["model__name", "-created_at"]

    def __str__(self) -> str:
        return f"{self.model} {self.digest[:19]}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ValidationError("Manifests are append-only; record a new one.")
        super().save(*args, **kwargs)

    def as_manifest(self):
        from integrity import Manifest

        return Manifest.from_dict({"source": self.source, "revision": self.revision, "files": self.files})
