"""A tiny stand-in engine for the provisioning tests (stdlib only, starts in ~0.1 s).

It honours the essentials of the engine contract (``provisioning/engines/base.py``): ``GET /health``,
``GET /metrics`` with ``vllm:num_requests_running``/``waiting``, ``GET /v1/models`` and a
non-streaming ``POST /v1/chat/completions`` with ``usage``, behind ``Authorization: Bearer``.
``FAKE_ENGINE_DELAY`` (seconds) slows each completion, to test draining.

``build_launch`` is the test-only launcher the node agent uses when
``BERTH_ENGINE_LAUNCHER_OVERRIDE=tests.provisioning.fake_engine.build_launch``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def build_launch(spec):
    """Like ``vllm serve``: the engine binds host:port itself (with SO_REUSEPORT, as vLLM does).

    Settings for a test travel from the agent's environment through ``EngineLaunch.env``, the way
    real launchers pass what an engine needs (the agent gives engines nothing else):
    ``FAKE_ENGINE_DELAY`` (seconds per completion), ``FAKE_ENGINE_BIND_DELAY`` (seconds before
    binding), ``FAKE_ENGINE_SQUAT_DIR`` (start a foreign server racing for the port, see
    ``squat``) and ``FAKE_ENGINE_INHERIT=1`` (serve on the agent's socket, as the CPU engine does).
    """
    from provisioning.engines.base import EngineLaunch

    env = {"FAKE_ENGINE_API_KEY": spec.api_key}
    for name in ("FAKE_ENGINE_DELAY", "FAKE_ENGINE_BIND_DELAY"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    argv = [sys.executable, os.path.abspath(__file__), spec.host, str(spec.port), spec.served_name]
    pass_fds: tuple[int, ...] = ()
    if os.environ.get("FAKE_ENGINE_INHERIT") == "1" and spec.listen_fd is not None:
        argv.append(f"--fd={spec.listen_fd}")
        pass_fds = (spec.listen_fd,)
    squat_dir = os.environ.get("FAKE_ENGINE_SQUAT_DIR")
    if squat_dir:
        squat(spec.host, spec.port, squat_dir)
    return EngineLaunch(argv=argv, env=env, pass_fds=pass_fds)


def squat(host: str, port: int, folder: str) -> None:
    """Start, once per folder, a foreign server that binds ``port`` as soon as it can and answers
    ``/health`` with 200: the process that wins the race for a port the agent picked. It runs in
    its own session, outside the engine's process tree; its pid goes to ``folder/squatter.pid``."""
    marker = Path(folder) / "squatter.pid"
    if marker.exists():
        return
    process = subprocess.Popen(  # noqa: S603 - the test's own helper
        [sys.executable, os.path.abspath(__file__), host, str(port), "squatter", "--squat"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker.write_text(str(process.pid))


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


class ReusePortServer(ThreadingHTTPServer):
    def server_bind(self):
        # vLLM's create_server_socket sets SO_REUSEADDR and SO_REUSEPORT before binding.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def main() -> None:
    host, port, served_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    options = sys.argv[4:]
    if "--squat" in options:
        run_squatter(host, port)
        return
    api_key = os.environ["FAKE_ENGINE_API_KEY"]
    delay = float(os.environ.get("FAKE_ENGINE_DELAY", "0"))
    handler = make_handler(api_key, served_name, delay)
    fd = next((int(o.split("=", 1)[1]) for o in options if o.startswith("--fd=")), None)
    if fd is not None:
        server = ThreadingHTTPServer((host, port), handler, bind_and_activate=False)
        server.socket.close()
        server.socket = socket.socket(fileno=fd)
        server.socket.listen()
    else:
        time.sleep(float(os.environ.get("FAKE_ENGINE_BIND_DELAY", "0")))
        server = ReusePortServer((host, port), handler)  # exits on EADDRINUSE, as vLLM does
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    print(f"fake engine for {served_name} on {host}:{port} CUDA_VISIBLE_DEVICES={gpus}", flush=True)
    server.serve_forever()


def run_squatter(host: str, port: int, patience: float = 20.0) -> None:
    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, fmt, *args):
            pass

    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            server = ThreadingHTTPServer((host, port), Healthy)
        except OSError:
            time.sleep(0.001)
            continue
        server.serve_forever()
        return


if __name__ == "__main__":
    main()
