"""A tiny stand-in engine for the provisioning tests (stdlib only, starts in ~0.1 s).

It honours the essentials of the engine contract (``workers/engines/base.py``): ``GET /health``,
``GET /metrics`` with ``vllm:num_requests_running``/``waiting``, ``GET /v1/models`` and a
non-streaming ``POST /v1/chat/completions`` with ``usage``, behind ``Authorization: Bearer``.
``FAKE_ENGINE_DELAY`` (seconds) slows each completion, to test draining.

``build_launch`` is the test-only launcher the node agent uses when
``BERTH_ENGINE_LAUNCHER_OVERRIDE=tests.workers.fake_engine.build_launch``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def build_launch(spec):
    from workers.engines.base import EngineLaunch

    return EngineLaunch(
        argv=[sys.executable, os.path.abspath(__file__), spec.host, str(spec.port), spec.served_name],
        env={"FAKE_ENGINE_API_KEY": spec.api_key},
    )


class State:
    running = 0
    lock = threading.Lock()


def make_handler(api_key: str, served_name: str, delay: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stdout.write("fake-engine: " + (fmt % args) + "\n")
            sys.stdout.flush()

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {api_key}":
                return True
            self._send(401, json.dumps({"error": "Unauthorized"}).encode())
            return False

        def do_GET(self):
            if self.path == "/health":
                self._send(200, b"")
            elif self.path == "/metrics":
                text = (
                    f'vllm:num_requests_running{{model_name="{served_name}"}} {float(State.running)}\n'
                    f'vllm:num_requests_waiting{{model_name="{served_name}"}} 0.0\n'
                )
                self._send(200, text.encode(), "text/plain; version=0.0.4")
            elif self.path == "/v1/models":
                if self._authorized():
                    self._send(200, json.dumps({"object": "list", "data": [{"id": served_name}]}).encode())
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            if not self._authorized():
                return
            with State.lock:
                State.running += 1
            try:
                time.sleep(delay)
                prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
                reply = "pong"
                self._send(
                    200,
                    json.dumps(
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "created": int(time.time()),
                            "model": served_name,
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": reply},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {
                                "prompt_tokens": len(prompt.split()),
                                "completion_tokens": 1,
                                "total_tokens": len(prompt.split()) + 1,
                            },
                        }
                    ).encode(),
                )
            finally:
                with State.lock:
                    State.running -= 1

    return Handler


def main() -> None:
    host, port, served_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    api_key = os.environ["FAKE_ENGINE_API_KEY"]
    delay = float(os.environ.get("FAKE_ENGINE_DELAY", "0"))
    server = ThreadingHTTPServer((host, port), make_handler(api_key, served_name, delay))
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    print(f"fake engine for {served_name} on {host}:{port} CUDA_VISIBLE_DEVICES={gpus}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
