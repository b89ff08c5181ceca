"""A wire-level engine that records every request body and answers what the test scripts.

The shared fake engine (``fake_upstream.py``) runs in its own process; tests that must see exactly
what the gateway forwarded (``cache_salt``) or make the engine answer an arbitrary error body (a
traceback, an exception string) use this one, an HTTP/1.1 server on a thread of the test process.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(body: dict) -> dict:
    chat = "messages" in body
    choice = (
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        if chat
        else {"index": 0, "text": "ok", "finish_reason": "stop", "logprobs": None}
    )
    return {
        "id": "cmpl-recorded",
        "object": "chat.completion" if chat else "text_completion",
        "created": 1700000000,
        "model": body.get("model"),
        "choices": [choice],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


class RecordingEngine:
    def __init__(self, api_key: str = "recording-engine"):
        self.api_key = api_key
        self.name = "recorder"
        self.bodies: list[dict] = []
        # (status, body bytes, content type) for the next answers; empty: a normal completion.
        self.scripted: list[tuple[int, bytes, str]] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                engine.bodies.append(body)
                if engine.scripted:
                    status, payload, content_type = engine.scripted.pop(0)
                else:
                    status, payload, content_type = (
                        200,
                        json.dumps(completion(body)).encode(),
                        "application/json",
                    )
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
