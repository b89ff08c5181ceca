"""A wire-level fake of the Hugging Face Hub: the model-info API and file downloads.

Enough of the protocol for ``HfApi.model_info(files_metadata=True)`` and ``hf_hub_download``:
``GET /api/models/<repo>[/revision/<rev>]`` and ``HEAD``/``GET /<repo>/resolve/<rev>/<file>``
with the ``X-Repo-Commit`` and ``ETag`` headers the client reads. Unknown repos answer 404 with
the Hub's ``X-Error-Code: RepoNotFound``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.downloads: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, repo: str, files: dict[str, bytes]) -> str:
        self.repos[repo] = files
        return self.sha(repo)

    @staticmethod
    def sha(repo: str) -> str:
        return hashlib.sha1(repo.encode(), usedforsecurity=False).hexdigest()

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], *, head=False) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _not_found(self, head=False) -> None:
                body = json.dumps({"error": "Repository not found"}).encode()
                self._send(
                    404, body, {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head=head
                )

            def _route(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                if path.startswith("/api/models/"):
                    rest = path.removeprefix("/api/models/")
                    repo = "/".join(rest.split("/")[:2])
                    files = hub.repos.get(repo)
                    if files is None:
                        return self._not_found(head)
                    info = {
                        "id": repo,
                        "modelId": repo,
                        "sha": hub.sha(repo),
                        "private": False,
                        "siblings": [
                            {
                                "rfilename": name,
                                "size": len(data),
                                "blobId": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                            }
                            for name, data in files.items()
                        ],
                    }
                    return self._send(
                        200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head=head
                    )
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                    data = hub.repos.get(repo, {}).get(filename)
                    if data is None:
                        return self._not_found(head)
                    if not head:
                        hub.downloads.append(f"{repo}/{filename}")
                    headers = {
                        "X-Repo-Commit": hub.sha(repo),
                        "ETag": f'"{hashlib.sha1(data, usedforsecurity=False).hexdigest()}"',
                        "Content-Type": "application/octet-stream",
                    }
                    return self._send(200, data, headers, head=head)
                return self._not_found(head)

            def do_GET(self) -> None:
                self._route(head=False)

            def do_HEAD(self) -> None:
                self._route(head=True)

        return Handler
