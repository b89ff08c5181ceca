"""The chaos benchmark's short run: every token billed exactly once while processes die."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chaos_short_run_meets_its_targets(tmp_path):
    out = tmp_path / "chaos.json"
    result = subprocess.run(  # noqa: S603
        [sys.executable, "bench/chaos.py", "--short", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["phase"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {
        "baseline",
        "gateway SIGTERM",
        "gateway SIGKILL",
        "consumer SIGKILL",
        "Redis restart",
        "PostgreSQL down",
        "engine SIGKILL",
    }
    # Traffic really flowed in every phase, so the comparison means something.
    assert all(row["requests"] >= 10 for row in rows.values()), rows
    missed = {name: row for name, row in rows.items() if not row["met"]}
    assert not missed, result.stdout[-4000:]
    assert result.returncode == 0
