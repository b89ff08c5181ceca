"""Choices for the model registry."""

from django.db import models


class Task(models.TextChoices):
    CHAT = "chat", "Chat completions"
    COMPLETION = "completion", "Text completions"
    EMBEDDING = "embedding", "Embeddings"


class SourceKind(models.TextChoices):
    HUGGINGFACE = "hf", "Hugging Face repository"
    LOCAL = "local", "Local folder"


class Visibility(models.TextChoices):
    PUBLIC = "public", "Public (every tenant)"
    PRIVATE = "private", "Private (listed tenants only)"


class Engine(models.TextChoices):
    VLLM = "vllm", "vLLM (GPUs)"
    CPU = "cpu", "CPU engine (CPU slots)"


DEFAULT_CURRENCY = "USD"


class SignatureKind(models.TextChoices):
    """How a model's OpenSSF model-signing signature is trusted (``integrity.signing``)."""

    KEY = "key", "Elliptic-curve public key (offline)"
    SIGSTORE = "sigstore", "Sigstore identity (needs Fulcio/Rekor reachable)"
