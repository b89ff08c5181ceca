"""Factories for the model registry and the GPU pool."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import factory

from models_registry import catalog
from models_registry.constants import Engine, SourceKind, Task, Visibility
from models_registry.models import Deployment, Model, Price
from provisioning.models import Gpu, Node


class ModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Model
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"model-{n}")
    source_kind = SourceKind.LOCAL
    source = "/models/tiny"
    task = Task.CHAT
    visibility = Visibility.PUBLIC
    gpu_memory_gb = 0
    tensor_parallel_size = 1

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        # Through the catalog, as the registry's own code paths: saved, then mirrored to Redis.
        return catalog.save_model(model=model_class(*args, **kwargs))


class DeploymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Deployment

    model = factory.SubFactory(ModelFactory)
    engine = Engine.CPU
    min_replicas = 0
    max_replicas = 4
    desired_replicas = 1


class PriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Price

    model = factory.SubFactory(ModelFactory)
    input_per_million = Decimal("0.50")
    output_per_million = Decimal("1.50")

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return catalog.add_price(price=model_class(*args, **kwargs))


def priced_model(name: str, input_price="0.10", output_price="0.40", *, since=None, **model_fields) -> Model:
    """A model with one price in effect since ``since`` (1 Jan 2025 by default), per million tokens."""
    model = ModelFactory(name=name, **model_fields)
    PriceFactory(
        model=model,
        input_per_million=Decimal(str(input_price)),
        output_per_million=Decimal(str(output_price)),
        effective_from=since or datetime(2025, 1, 1, tzinfo=UTC),
    )
    return model


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    name = factory.Sequence(lambda n: f"node-{n}")
    address = "127.0.0.1"
    queue = factory.LazyAttribute(lambda o: Node.queue_for(o.name))
    cpu_slots = 2


def add_gpus(node: Node, count: int, memory_mb: int = 81_920) -> list[Gpu]:
    return [
        Gpu.objects.create(node=node, index=i, name="H100", memory_total_mb=memory_mb) for i in range(count)
    ]
