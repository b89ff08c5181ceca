"""Real CPU engine processes for the engine tests, started the way a node agent starts them.

The tiny chat model is created once per session in a temporary folder; each engine is started
once per session with ``python -m cpu_engine`` on a free port and stopped at the end. Nothing here
needs Django, PostgreSQL or Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cpu_engine.embedding_model import embedding_model_path
from cpu_engine.tests.engine_process import (
    API_KEY,
    Engine,
    EngineArgs,
    free_port,
    start_engine,
    stop_engine,
    wait_ready,
)
from cpu_engine.tiny_model import create_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("models") / "berth-tiny-chat")


@pytest.fixture(scope="session")
def _engines(tiny_model_path, tmp_path_factory) -> Iterator[dict[str, Engine]]:
    """Both engines, started together so their model loads overlap."""
    logs = tmp_path_factory.mktemp("engine-logs")
    specs = {
        "chat": EngineArgs(
            served_name="berth-tiny-chat",
            source=str(tiny_model_path),
            task="chat",
            host="127.0.0.1",
            port=free_port(),
            api_key=API_KEY,
        ),
        "embedding": EngineArgs(
            served_name="all-minilm-l6-v2",
            source=str(embedding_model_path()),
            task="embedding",
            host="127.0.0.1",
            port=free_port(),
            api_key=API_KEY,
        ),
    }
    engines: dict[str, Engine] = {}
    try:
        for name, spec in specs.items():
            engines[name] = start_engine(spec, logs / f"{name}.log")
        for engine in engines.values():
            wait_ready(engine)
        yield engines
    finally:
        for engine in engines.values():
            stop_engine(engine)


@pytest.fixture(scope="session")
def chat_engine(_engines) -> Engine:
    return _engines["chat"]


@pytest.fixture(scope="session")
def embedding_engine(_engines) -> Engine:
    return _engines["embedding"]
