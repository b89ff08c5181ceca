"""A pytest plugin for tests/test_markers.py: after collection, write each selected test's
fixtures (the whole closure) as JSON to the file named by ``BERTH_COLLECTED_FIXTURES``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def pytest_collection_finish(session) -> None:
    target = os.environ.get("BERTH_COLLECTED_FIXTURES")
    if target:
        fixtures = {item.nodeid: sorted(getattr(item, "fixturenames", [])) for item in session.items}
        Path(target).write_text(json.dumps(fixtures))
