"""Real CPU engine processes for the engine tests, started the way a node agent starts them.

The tiny chat model is created once per session in a temporary folder; each engine is started
once per session from ``build_launch`` on a free port and stopped at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from workers.embedding_model import embedding_model_path
from workers.engines import EngineSpec, build_launch
from workers.tiny_model import create_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-engine-key-4f1c"
START_TIMEOUT = 120


@dataclass
class Engine:
    spec: EngineSpec
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.spec.api_key}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_engine(spec: EngineSpec, log: Path) -> Engine:
    launch = build_launch(spec)
    # The worktree's modules must win over the editable install of the main checkout.
    env = {**os.environ, **launch.env, "PYTHONPATH": str(REPO_ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(launch.argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    engine = Engine(spec=spec, process=process, log=log)
    return engine


def wait_ready(engine: Engine) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            raise RuntimeError(
                f"engine exited with {engine.process.returncode}:\n{engine.log.read_text()[-3000:]}"
            )
        try:
            if (
                httpx.get(f"{engine.url}{build_launch(engine.spec).health_path}", timeout=1).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"engine not ready after {START_TIMEOUT}s:\n{engine.log.read_text()[-3000:]}")


def stop_engine(engine: Engine) -> None:
    engine.process.terminate()
    try:
        engine.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        engine.process.kill()
        engine.process.wait(timeout=5)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("models") / "berth-tiny-chat")


@pytest.fixture(scope="session")
def _engines(tiny_model_path, tmp_path_factory) -> Iterator[dict[str, Engine]]:
    """Both engines, started together so their model loads overlap."""
    logs = tmp_path_factory.mktemp("engine-logs")
    specs = {
        "chat": EngineSpec(
            engine="cpu",
            served_name="berth-tiny-chat",
            source=str(tiny_model_path),
            task="chat",
            host="127.0.0.1",
            port=free_port(),
            api_key=API_KEY,
        ),
        "embedding": EngineSpec(
            engine="cpu",
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


def scrape(engine: Engine) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} for the vllm:* series."""
    text = httpx.get(f"{engine.url}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        if line.startswith("vllm:"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """The value of one series, matched by name and a subset of labels."""
    for key, value in values.items():
        series, _, rest = key.partition("{")
        if series != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            return value
    raise KeyError(f"{name} {labels} not in metrics")
