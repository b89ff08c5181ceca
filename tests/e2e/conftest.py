"""The real stack for the end-to-end tests: the gateway process, real CPU engine workers started
with the node agent's own launch description, and the usage consumer (``tests.gateway.test_usage
.drain``) writing into PostgreSQL.

The engines are started once per session from unsaved registry rows (a module-scoped fixture has
no database); each test saves the same ``Model``/``Deployment`` rows, publishes them through the
registry's mirror and routes the model to the worker, as the scheduler does when a worker is up.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from cpu_engine.tests.engine_process import (
    REPO_ROOT,
    Engine,
    EngineArgs,
    free_port,
    stop_engine,
    wait_ready,
)
from tests.gateway.conftest import start_gateway

CHAT = "tiny-chat-e2e"
EMBED = "all-minilm-e2e"
MAX_LORAS = 2


@dataclass
class Worker:
    """A started engine as the gateway's routing table names it."""

    name: str
    engine: Engine

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def api_key(self) -> str:
        return self.engine.spec.api_key


def launch(*, name: str, source: str, task: str, max_loras: int, log: Path) -> Worker:
    """Start a worker from the node agent's ``engine_spec`` of an (unsaved) deployment."""
    from models_registry.models import Deployment, Model
    from provisioning.agent import engine_spec
    from provisioning.engines import build_launch
    from provisioning.models import Worker as WorkerRow

    model = Model(name=name, source=source, task=task, source_kind="local")
    deployment = Deployment(model=model, engine="cpu", max_loras=max_loras, max_lora_rank=16)
    row = WorkerRow(deployment=deployment, api_key=secrets.token_urlsafe(16), gpu_indices=[])
    port = free_port()
    spec = engine_spec(row, host="127.0.0.1", port=port)
    launched = build_launch(spec)
    env = {**os.environ, **launched.env, "PYTHONPATH": str(REPO_ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            launched.argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    args = EngineArgs(
        served_name=name, source=source, task=task, host="127.0.0.1", port=port, api_key=row.api_key
    )
    return Worker(name=f"e2e-{name}", engine=Engine(spec=args, process=process, log=log))


@pytest.fixture(scope="session")
def e2e_files(tmp_path_factory):
    """The tiny base model and, under the allowed adapter root, a tiny PEFT adapter made offline."""
    from cpu_engine.tiny_adapter import make_tiny_adapter
    from cpu_engine.tiny_model import create_tiny_model

    root = tmp_path_factory.mktemp("e2e")
    base = create_tiny_model(root / "tiny")
    adapters = root / "adapters"
    adapter = make_tiny_adapter(adapters / "support", base, seed=1)
    return {"base": base, "adapter_root": adapters, "adapter": adapter}


@pytest.fixture(scope="session")
def e2e_workers(e2e_files, tmp_path_factory):
    from cpu_engine.embedding_model import embedding_model_path

    logs = tmp_path_factory.mktemp("e2e-logs")
    workers: dict[str, Worker] = {}
    try:
        workers["chat"] = launch(
            name=CHAT, source=str(e2e_files["base"]), task="chat", max_loras=MAX_LORAS, log=logs / "chat.log"
        )
        workers["embedding"] = launch(
            name=EMBED,
            source=str(embedding_model_path()),
            task="embedding",
            max_loras=0,
            log=logs / "embed.log",
        )
        for worker in workers.values():
            wait_ready(worker.engine)
        yield workers
    finally:
        for worker in workers.values():
            stop_engine(worker.engine)


@pytest.fixture(scope="session")
def e2e_gateway(_use_test_redis_db):
    proc = start_gateway()
    yield proc
    proc.stop()
