"""Export to SIEMs against real local receivers: a file, syslog over UDP and TCP, a signed webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.test import override_settings

from audit import export, trail
from audit.models import ExportCursor

pytestmark = pytest.mark.django_db


def _entries(n: int, start: int = 0):
    return [trail.record(action="test.export", summary=f"entry {i}") for i in range(start, start + n)]


def test_file_export_sends_each_entry_once_in_order(tmp_path):
    path = tmp_path / "siem" / "audit.jsonl"
    with override_settings(AUDIT_EXPORT="file", AUDIT_EXPORT_PATH=str(path), AUDIT_EXPORT_BATCH=2):
        _entries(3)
        assert export.export_pending() == 3
        assert export.export_pending() == 0  # nothing new: nothing sent again
        _entries(2, start=3)
        assert export.export_pending() == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["summary"] for line in lines] == [f"entry {i}" for i in range(5)]
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    assert lines[1]["prev_hash"] == lines[0]["hash"]


def test_a_failed_send_moves_no_cursor_and_is_retried(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    with override_settings(AUDIT_EXPORT="file", AUDIT_EXPORT_PATH=str(path)):
        _entries(2)

        def down(records):
            raise OSError("SIEM unreachable")

        monkeypatch.setitem(export.SENDERS, "file", down)
        with pytest.raises(OSError):
            export.export_pending()
        assert ExportCursor.objects.get().last_seq == 0
        monkeypatch.undo()
        assert export.export_pending() == 2
    assert len(path.read_text().splitlines()) == 2


def test_syslog_over_udp_is_rfc5424():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        port = server.getsockname()[1]
        with override_settings(AUDIT_EXPORT="syslog", AUDIT_EXPORT_SYSLOG=f"udp://127.0.0.1:{port}"):
            entry = trail.record(action="api_key.created", summary="key made")
            assert export.export_pending() == 1
        message = server.recv(65535)
    header, _, body = message.partition(b"\xef\xbb\xbf")
    parts = header.decode().split(" ", 6)
    assert parts[0] == "<110>1"  # facility 13 (log audit) * 8 + severity 6 (info)
    assert parts[1].endswith("Z") and parts[3:6] == ["berth", "-", "api_key.created"]
    assert parts[6].startswith(f'[berth@32473 seq="{entry.seq}"')
    assert json.loads(body)["hash"] == entry.hash


class _Collect(socketserver.StreamRequestHandler):
    def handle(self):
        self.server.received.append(self.rfile.read())


def test_syslog_over_tcp_uses_octet_counting():
    server = socketserver.TCPServer(("127.0.0.1", 0), _Collect)
    server.received = []
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        with override_settings(
            AUDIT_EXPORT="syslog", AUDIT_EXPORT_SYSLOG=f"tcp://127.0.0.1:{server.server_address[1]}"
        ):
            _entries(2)
            assert export.export_pending() == 2
        thread.join(5)
    finally:
        server.server_close()
    data = server.received[0]
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    assert len(frames) == 2 and all(frame.startswith(b"<110>1 ") for frame in frames)


def test_the_webhook_is_signed_with_hmac_sha256():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["X-Berth-Signature"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    secret = "whsec-audit-0123456789"
    try:
        with override_settings(
            AUDIT_EXPORT="webhook",
            AUDIT_EXPORT_WEBHOOK_URL=f"http://127.0.0.1:{server.server_address[1]}/siem",
            AUDIT_EXPORT_WEBHOOK_SECRET=secret,
        ):
            _entries(2)
            assert export.export_pending() == 2
        thread.join(5)
    finally:
        server.server_close()
    ((header, body),) = received
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert [e["summary"] for e in json.loads(body)["entries"]] == ["entry 0", "entry 1"]


def test_without_an_export_nothing_happens():
    _entries(1)
    assert export.export_pending() == 0
    assert not ExportCursor.objects.exists()
