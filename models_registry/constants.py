"""Choices for the model registry."""

from django.db import models

from models_registry.parsers import REASONING_PARSERS, TOOL_CALL_PARSERS


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


class AdapterSourceKind(models.TextChoices):
    HUB = "hub", "Hugging Face repository"
    PATH = "path", "Folder on the server"
    URL = "url", "URL of a folder"


class AdapterStatus(models.TextChoices):
    PENDING = "pending", "Pending (being fetched and checked)"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    DELETED = "deleted", "Deleted"


# The tasks an adapter's base may have: LoRA adapters here change generation, not embeddings.
ADAPTER_BASE_TASKS = ("chat", "completion")
# vLLM's tool-call and reasoning parsers, as (value, label) choices; blank means none.
TOOL_CALL_PARSER_CHOICES = [(name, name) for name in TOOL_CALL_PARSERS]
REASONING_PARSER_CHOICES = [(name, name) for name in REASONING_PARSERS]


class SignatureKind(models.TextChoices):
    """How a model's OpenSSF model-signing signature is trusted (``integrity.signing``)."""

    KEY = "key", "Elliptic-curve public key (offline)"
    SIGSTORE = "sigstore", "Sigstore identity (needs Fulcio/Rekor reachable)"
