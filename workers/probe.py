"""Checks of engines: HTTP (``/health`` and ``/metrics``), the one outbound seam to engines, and
on the agent's own host, who listens on an engine's port.

Tests and the benchmark replace ``health`` and ``load`` here, nowhere else.
"""

from __future__ import annotations

import enum
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import psutil

_METRIC = re.compile(r"^(vllm:num_requests_(?:running|waiting))(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Load:
    running: float
    waiting: float

    @property
    def total(self) -> float:
        return self.running + self.waiting


def _get(url: str, *, api_key: str = "", timeout: float = 2.0) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 - engine URLs are built by the node agent
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read(1_000_000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, ValueError):
        return 0, ""


def health(url: str, *, api_key: str = "", path: str = "/health", timeout: float = 2.0) -> bool:
    status, _ = _get(url.rstrip("/") + path, api_key=api_key, timeout=timeout)
    return status == 200


def parse_load(text: str) -> Load:
    values = {"vllm:num_requests_running": 0.0, "vllm:num_requests_waiting": 0.0}
    for line in text.splitlines():
        match = _METRIC.match(line.strip())
        if match:
            values[match.group(1)] += float(match.group(2))
    return Load(running=values["vllm:num_requests_running"], waiting=values["vllm:num_requests_waiting"])


def load(url: str, *, api_key: str = "", timeout: float = 2.0) -> Load | None:
    """In-flight requests of one engine, or None when its metrics cannot be read."""
    status, text = _get(url.rstrip("/") + "/metrics", api_key=api_key, timeout=timeout)
    if status != 200:
        return None
    return parse_load(text)


class PortHolder(enum.Enum):
    NOBODY = "nobody"  # nothing listens yet
    ENGINE = "engine"  # every listener is the engine or one of its descendants
    FOREIGN = "foreign"  # some other process listens too (or one we may not inspect)


def port_holder(*, port: int, pid: int) -> PortHolder:
    """Who listens on TCP ``port`` of this host, seen from the engine process ``pid``.

    A health check cannot tell an engine from a foreign server that took its port, so the node
    agent asks the kernel (through psutil) before it publishes the engine's URL. A listener whose
    owner we cannot see (another user's process) counts as foreign.
    """
    try:
        engine = psutil.Process(pid)
        tree = {pid} | {child.pid for child in engine.children(recursive=True)}
    except psutil.NoSuchProcess:
        return PortHolder.NOBODY
    holders = {
        conn.pid
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    }
    if not holders:
        return PortHolder.NOBODY
    return PortHolder.ENGINE if holders <= tree else PortHolder.FOREIGN
