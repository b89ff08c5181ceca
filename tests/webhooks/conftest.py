"""A local HTTP receiver for webhook deliveries, and the tasks queued at commit captured."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    """Answers each POST with the next status of ``statuses`` (then 200) and keeps what came."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                reply = b'{"ok": true}' if status < 300 else b"upstream broke"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/berth"


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def allow_private(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True


@pytest.fixture
def queued(monkeypatch):
    """Delivery ids ``tasks.deliver.delay`` was called with (no broker in these tests)."""
    from webhooks import tasks

    ids: list[str] = []
    monkeypatch.setattr(tasks.deliver, "delay", ids.append)
    monkeypatch.setattr(tasks.deliver, "apply_async", lambda args, countdown: ids.append(args[0]))
    return ids
