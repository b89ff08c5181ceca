"""The batch benchmark's short run: a batch completes on idle capacity while interactive traffic flows.

The TTFT target (within 20 %) is the full run's, on a quiet machine; here the run must work end to
end: every line done once, engine priority seen, both phases measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_batch_bench_short_run_completes_the_batch_and_measures_both_phases(tmp_path):
    out = tmp_path / "batch.json"
    result = subprocess.run(  # noqa: S603
        [sys.executable, "bench/batch.py", "--lines", "60", "--seconds", "3", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows["batch"]["status"] == "completed"
    assert (rows["batch"]["completed"], rows["batch"]["failed"]) == (60, 0)
    assert rows["batch"]["lines_per_s"] > 0
    assert rows["interactive_alone"]["n"] >= 3 and rows["interactive_with_batch"]["n"] >= 3
    # Every batch line and interactive request reached the engine once.
    assert (
        rows["engine"]["requests"]
        >= 60 + rows["interactive_alone"]["n"] + rows["interactive_with_batch"]["n"]
    )
    assert "| interactive + batch |" in result.stdout
    assert result.returncode == 0
