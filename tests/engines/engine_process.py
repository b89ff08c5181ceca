"""Engine processes for tests: start one from ``build_launch`` as a node agent would, wait for
``/health``, stop it; and read its Prometheus metrics."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from workers.engines import EngineSpec, build_launch

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
