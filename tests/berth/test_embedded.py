"""The embedded servers start, are reused, and stop cleanly even in awkward conditions."""

from __future__ import annotations

import os

import psutil
import pytest

from berth import embedded

pytestmark = pytest.mark.processes  # real PostgreSQL and Redis servers of their own


def gone(pid: int, timeout: float = 5) -> bool:
    """pg_ctl -w returns once the pid file is gone; the process exits a moment later."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def data_dir(tmp_path):
    yield tmp_path / "var"
    embedded.stop_postgres(tmp_path / "var")
    embedded.stop_redis(tmp_path / "var")


def test_servers_start_once_are_reused_and_stop(data_dir):
    pg = embedded.ensure_postgres(data_dir)
    rd = embedded.ensure_redis(data_dir)
    assert pg.started and rd.started
    again = embedded.ensure_postgres(data_dir)
    assert not again.started and again.url == pg.url and again.pid == pg.pid
    import psycopg

    with psycopg.connect(pg.url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "berth"
    assert embedded.stop_postgres(data_dir) and embedded.stop_redis(data_dir)
    assert gone(pg.pid) and gone(rd.pid)
    assert embedded.stop_postgres(data_dir) is False  # idempotent


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_stop_works_after_a_parent_folder_lost_its_traversal_bit(data_dir):
    pg = embedded.ensure_postgres(data_dir)
    parent = data_dir.parent
    parent.chmod(0o700)  # what pytest does to its tmp root when another session starts
    assert embedded.stop_postgres(data_dir)
    assert gone(pg.pid)
