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

# vLLM's tool-call and reasoning parsers, as (value, label) choices; blank means none.
TOOL_CALL_PARSER_CHOICES = [(name, name) for name in TOOL_CALL_PARSERS]
REASONING_PARSER_CHOICES = [(name, name) for name in REASONING_PARSERS]
