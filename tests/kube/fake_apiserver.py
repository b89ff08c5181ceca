"""A small stand-in for the Kubernetes API server, for the calls the backend makes.

It keeps Deployments, Services and Pods in memory, answers on the real REST paths with the
API server's status codes (404 NotFound, 409 AlreadyExists / Conflict on a stale
resourceVersion, 415 for a PATCH content type it does not take) and records every request, so
tests assert what the client actually sent.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROUTE = re.compile(
    r"^/(?P<group>api/v1|apis/apps/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>deployments|services|pods)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>scale))?$"
)
KINDS = {"deployments": "Deployment", "services": "Service", "pods": "Pod"}
PATCH_TYPES = {"application/merge-patch+json", "application/strategic-merge-patch+json"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass
class FakeApiServer:
    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)  # (plural, ns, name)
    requests: list[Request] = field(default_factory=list)
    # (method, plural, status[, action]): answer the next matching request with this error
    # instead, after running action() (e.g. another writer creating the object meanwhile).
    inject: list[tuple] = field(default_factory=list)
    _rv: int = 100
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, plural: str, obj: dict) -> dict:
        meta = obj["metadata"]
        with self._lock:
            self._rv += 1
            meta.setdefault("resourceVersion", str(self._rv))
            meta.setdefault("uid", f"uid-{self._rv}")
            self.objects[(plural, meta["namespace"], meta["name"])] = obj
        return obj

    def get(self, plural: str, ns: str, name: str) -> dict | None:
        return self.objects.get((plural, ns, name))

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if method in (None, r.method)]

    # -- request handling ---------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, content_type: str | None, raw_body: bytes):
        url = urlsplit(raw_path)
        body = json.loads(raw_body) if raw_body else None
        self.requests.append(Request(method, url.path, parse_qs(url.query), content_type, body))
        match = ROUTE.match(url.path)
        if not match:
            return 404, _status(404, "NotFound", f"no route {url.path}")
        ns, plural, name, sub = match["ns"], match["plural"], match["name"], match["sub"]
        for i, (m, p, code, *action) in enumerate(self.inject):
            if m == method and p == plural:
                del self.inject[i]
                for act in action:
                    act()
                reason = {409: "Conflict", 404: "NotFound", 500: "InternalError"}.get(code, "Unknown")
                return code, _status(code, reason, f"injected {code}")
        with self._lock:
            return self._dispatch(method, ns, plural, name, sub, content_type, body, parse_qs(url.query))

    def _dispatch(self, method, ns, plural, name, sub, content_type, body, query):
        key = (plural, ns, name)
        kind = KINDS[plural]
        if name is None and method == "GET":
            items = [o for (p, n, _), o in self.objects.items() if p == plural and n == ns]
            selector = query.get("labelSelector", [""])[0]
            items = [o for o in items if _matches(o, selector)]
            return 200, {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {}, "items": items}
        if method in ("POST", "PUT") and content_type not in (None, "application/json"):
            # An empty Content-Type is read as JSON, as the API server does (negotiate.go).
            return 415, _status(415, "UnsupportedMediaType", f"{content_type} is not supported")
        if name is None and method == "POST":
            name = body["metadata"]["name"]
            if (plural, ns, name) in self.objects:
                return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
            self._rv += 1
            obj = copy.deepcopy(body)
            obj["metadata"].update(resourceVersion=str(self._rv), uid=f"uid-{self._rv}", generation=1)
            self.objects[(plural, ns, name)] = obj
            return 201, obj
        current = self.objects.get(key)
        if current is None:
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        if method == "GET":
            return 200, current
        if method == "PUT":
            sent_rv = body["metadata"].get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                return 409, _status(409, "Conflict", "the object has been modified")
            self._rv += 1
            obj = copy.deepcopy(body)
            obj["metadata"].update(resourceVersion=str(self._rv), uid=current["metadata"]["uid"])
            self.objects[key] = obj
            return 200, obj
        if method == "PATCH" and sub == "scale":
            if content_type not in PATCH_TYPES:
                return 415, _status(415, "UnsupportedMediaType", f"{content_type} is not supported")
            current["spec"]["replicas"] = body["spec"]["replicas"]
            self._rv += 1
            current["metadata"]["resourceVersion"] = str(self._rv)
            return 200, {
                "apiVersion": "autoscaling/v1",
                "kind": "Scale",
                "metadata": {"name": name, "namespace": ns, "resourceVersion": str(self._rv)},
                "spec": {"replicas": current["spec"]["replicas"]},
                "status": {"replicas": current["spec"]["replicas"]},
            }
        if method == "DELETE":
            del self.objects[key]
            # Services answer with the deleted object; a Deployment without finalizers, Status.
            if plural == "services":
                return 200, current
            return 200, _status(200, "", "", status="Success")
        return 405, _status(405, "MethodNotAllowed", method)


def _matches(obj: dict, selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        k, _, v = term.partition("=")
        if labels.get(k) != v:
            return False
    return True


def _status(code: int, reason: str, message: str, status: str = "Failure") -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": status,
        "message": message,
        "reason": reason,
        "code": code,
    }


def serve(api: FakeApiServer) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            code, payload = api.handle(self.command, self.path, self.headers.get("Content-Type"), raw)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
