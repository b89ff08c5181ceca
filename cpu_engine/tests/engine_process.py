"""Engine processes for tests: start ``python -m cpu_engine`` as a node agent would (key in the
environment, offline, capped threads), wait for ``/health``, stop it; and read its Prometheus
metrics."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-engine-key-4f1c"
START_TIMEOUT = 120
THREADS = str(max(1, min(4, os.cpu_count() or 1)))


@dataclass(frozen=True)
class EngineArgs:
    """What the engine is started with (the fields of the node agent's EngineSpec it reads)."""

    served_name: str
    source: str
    task: str
    host: str
    port: int
    api_key: str
    extra_args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cpu_engine",
            "--task",
            self.task,
            "--model",
            self.source,
            "--served-model-name",
            self.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--threads",
            THREADS,
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        return {
            "VLLM_API_KEY": self.api_key,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": THREADS,
            "MKL_NUM_THREADS": THREADS,
            "PYTHONUNBUFFERED": "1",
        }


@dataclass
class Engine:
    spec: EngineArgs
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


def start_engine(spec: EngineArgs, log: Path) -> Engine:
    # The worktree's modules must win over an editable install of another checkout.
    env = {**os.environ, **spec.env(), "PYTHONPATH": str(REPO_ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(spec.argv(), env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    return Engine(spec=spec, process=process, log=log)


def wait_ready(engine: Engine) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            raise RuntimeError(
                f"engine exited with {engine.process.returncode}:\n{engine.log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{engine.url}/health", timeout=1).status_code == 200:
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
