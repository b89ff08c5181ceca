"""Checks of engines: HTTP (``/health`` and ``/metrics``), the one outbound seam to engines, and
on the agent's own host, who listens on an engine's port.

Tests and the benchmark replace ``health`` and ``load`` here, nowhere else.
"""

from __future__ import annotations

import enum
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

import psutil

from contract import engine_metrics


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
    parsed = engine_metrics.parse(text)
    return Load(running=parsed.running, waiting=parsed.waiting)


def load(url: str, *, api_key: str = "", timeout: float = 2.0) -> Load | None:
    """In-flight requests of one engine, or None when its metrics cannot be read."""
    status, text = _get(url.rstrip("/") + "/metrics", api_key=api_key, timeout=timeout)
    if status != 200:
        return None
    return parse_load(text)


class PortHolder(enum.Enum):
    NOBODY = "nobody"  # nothing listens yet
    ENGINE = "engine"  # every listener is the engine or one of its descendants
    FOREIGN = "foreign"  # some other process listens on it too


def port_holder(*, port: int, pid: int) -> PortHolder:
    """Who listens on TCP ``port`` of this host, seen from the engine process ``pid``.

    A health check cannot tell an engine from a foreign server that took its port, so the node
    agent asks the kernel before it publishes the engine's URL: the listening sockets on the port
    (``/proc/net/tcp*``) against the sockets open in the engine's process tree. Only the engine's
    own descriptors are read, not every process's as ``psutil.net_connections`` would (200 ms
    on this 2-core box with 180 processes, against 55 ms).
    """
    try:
        engine = psutil.Process(pid)
        tree = [pid, *(child.pid for child in engine.children(recursive=True))]
    except psutil.NoSuchProcess:
        return PortHolder.NOBODY
    listening = _listening_inodes(port)
    if not listening:
        return PortHolder.NOBODY
    return PortHolder.ENGINE if listening <= _socket_inodes(tree) else PortHolder.FOREIGN


_TCP_LISTEN = "0A"


def _listening_inodes(port: int) -> set[int]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle)  # header
                for line in handle:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(inode))
        except FileNotFoundError:  # no IPv6 on this host
            continue
    return inodes


def _socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for fd in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes
