"""HTTP checks of engines (``/health`` and ``/metrics``): the one outbound seam to engines.

Tests and the benchmark replace ``health`` and ``load`` here, nowhere else.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass

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
