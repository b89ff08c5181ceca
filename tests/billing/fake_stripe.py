"""A local HTTP server speaking Stripe's wire format, for the calls Berth makes.

Real HTTP on 127.0.0.1, so the official ``stripe`` client is exercised as it is in production:
form-encoded bodies in bracket notation, Bearer authentication, JSON objects with ``object`` and
prefixed ids, and Stripe's idempotency semantics — the same ``Idempotency-Key`` with the same
request replays the stored response (``Idempotent-Replayed: true``); with different parameters it
is a 400 ``idempotency_error``. Every request is recorded. :meth:`FakeStripe.fail` makes upcoming
requests fail: an HTTP error or a dropped connection before the request is processed, or a dropped
connection *after* it was processed (the client never sees the result that Stripe kept).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_berth_fake"


@dataclass
class Recorded:
    method: str
    path: str
    params: dict
    headers: dict  # lower-cased names
    status: int | None = None
    replayed: bool = False
    dropped: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass
class Failure:
    method: str
    path: re.Pattern
    mode: str  # "error": HTTP error before processing; "drop": close first; "drop_after": process, then close
    status: int
    times: int


@dataclass
class State:
    customers: dict = field(default_factory=dict)
    invoices: dict = field(default_factory=dict)
    items: dict = field(default_factory=dict)
    idempotent: dict = field(default_factory=dict)  # key -> (fingerprint, status, body)
    sent: list = field(default_factory=list)  # invoice ids, once per /send processed
    payments: list = field(default_factory=list)  # (invoice id, "out_of_band" | "customer")


def decode_form(body: str) -> dict:
    """``metadata[tenant_id]=x&lines[0][a]=1`` → nested dicts (lists for numeric indexes)."""
    result: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return result


class StripeError(Exception):
    def __init__(self, status: int, type_: str, message: str, code: str | None = None, param=None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"type": type_, "message": message}}
        if code:
            self.body["error"]["code"] = code
        if param:
            self.body["error"]["param"] = param


class FakeStripe:
    def __init__(self, api_key: str = API_KEY):
        self.api_key = api_key
        self.state = State()
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._serve(self)

            def do_POST(self):
                fake._serve(self)

            def do_DELETE(self):
                fake._serve(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> FakeStripe:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, method: str, path: str, *, mode: str = "error", status: int = 500, times: int = 1):
        """Fail the next ``times`` requests matching ``method`` and the ``path`` regex (full match)."""
        assert mode in ("error", "drop", "drop_after")
        with self.lock:
            self.failures.append(Failure(method.upper(), re.compile(path), mode, status, times))

    def calls(self, method: str, path: str) -> list[Recorded]:
        pattern = re.compile(path)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    def creates(self, path: str) -> list[Recorded]:
        """POSTs to ``path`` that were processed for the first time (not replayed, not refused)."""
        return [r for r in self.calls("POST", path) if r.status == 200 and not r.replayed]

    # ------------------------------------------------------------------ HTTP

    def _take_failure(self, method: str, path: str) -> Failure | None:
        with self.lock:
            for failure in self.failures:
                if failure.times > 0 and failure.method == method and failure.path.fullmatch(path):
                    failure.times -= 1
                    return failure
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length).decode() if length else ""
        method = handler.command
        params = decode_form(body if method == "POST" else split.query)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = Recorded(method, split.path, params, headers)
        with self.lock:
            self.requests.append(record)
        failure = self._take_failure(method, split.path)
        if failure and failure.mode == "drop":
            record.dropped = True
            handler.close_connection = True
            return
        if failure and failure.mode == "error":
            error = StripeError(failure.status, "api_error", "Injected failure")
            self._respond(handler, record, failure.status, error.body)
            return
        status, payload, replayed = self._process(method, split.path, params, headers, body)
        record.replayed = replayed
        if failure and failure.mode == "drop_after":
            record.status, record.dropped = status, True
            handler.close_connection = True
            return
        self._respond(handler, record, status, payload, replayed=replayed)

    def _respond(self, handler, record: Recorded, status: int, payload: dict, replayed: bool = False):
        record.status = status
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Request-Id", f"req_{next(self._ids)}")
        if replayed:
            handler.send_header("Idempotent-Replayed", "true")
        handler.end_headers()
        handler.wfile.write(data)

    def _process(self, method, path, params, headers, body) -> tuple[int, dict, bool]:
        auth = headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            shown = auth.removeprefix("Bearer ")[:8]
            return (
                401,
                StripeError(401, "invalid_request_error", f"Invalid API Key provided: {shown}***").body,
                False,
            )
        key = headers.get("idempotency-key") if method == "POST" else None
        fingerprint = (method, path, body)
        with self.lock:
            if key:
                stored = self.state.idempotent.get(key)
                if stored is not None:
                    if stored[0] != fingerprint:
                        error = StripeError(
                            400,
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters "
                            "they were first used with.",
                        )
                        return 400, error.body, False
                    return stored[1], stored[2], True
            try:
                status, payload = 200, self._route(method, path, params)
            except StripeError as error:
                status, payload = error.status, error.body
            if key:
                self.state.idempotent[key] = (fingerprint, status, payload)
            return status, payload, False

    # ------------------------------------------------------------------ API

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}fake"

    def _route(self, method: str, path: str, params: dict) -> dict:
        routes = [
            ("POST", r"/v1/customers", self._create_customer),
            ("GET", r"/v1/customers/(?P<id>[^/]+)", lambda p, id: self._get(self.state.customers, id)),
            ("POST", r"/v1/invoices", self._create_invoice),
            ("GET", r"/v1/invoices/(?P<id>[^/]+)", lambda p, id: self._invoice(id)),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/finalize", self._finalize),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/send", self._send),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/pay", self._pay),
            ("POST", r"/v1/invoices/(?P<id>[^/]+)/void", self._void),
            ("DELETE", r"/v1/invoices/(?P<id>[^/]+)", self._delete_invoice),
            ("POST", r"/v1/invoiceitems", self._create_item),
            ("GET", r"/v1/invoiceitems", self._list_items),
        ]
        for verb, pattern, view in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                return view(params, **match.groupdict())
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path}).")

    def _get(self, table: dict, id: str) -> dict:
        if id not in table:
            raise StripeError(
                404, "invalid_request_error", f"No such object: '{id}'", "resource_missing", "id"
            )
        return table[id]

    def _require(self, params: dict, *names: str) -> None:
        for name in names:
            if not params.get(name):
                raise StripeError(
                    400,
                    "invalid_request_error",
                    f"Missing required param: {name}.",
                    "parameter_missing",
                    name,
                )

    def _create_customer(self, params: dict) -> dict:
        customer = {
            "id": self._new_id("cus"),
            "object": "customer",
            "created": int(time.time()),
            "name": params.get("name"),
            "email": params.get("email"),
            "metadata": params.get("metadata", {}),
            "livemode": False,
        }
        self.state.customers[customer["id"]] = customer
        return customer

    def _create_invoice(self, params: dict) -> dict:
        self._require(params, "customer")
        self._get(self.state.customers, params["customer"])
        if params.get("collection_method") == "send_invoice" and not params.get("days_until_due"):
            self._require(params, "days_until_due")
        invoice = {
            "id": self._new_id("in"),
            "object": "invoice",
            "customer": params["customer"],
            "currency": params.get("currency", "usd"),
            "collection_method": params.get("collection_method", "charge_automatically"),
            "days_until_due": int(params["days_until_due"]) if params.get("days_until_due") else None,
            "auto_advance": params.get("auto_advance") == "true",
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "status": "draft",
            "number": None,
            "hosted_invoice_url": None,
            "livemode": False,
        }
        self.state.invoices[invoice["id"]] = invoice
        return self._invoice(invoice["id"])

    def _invoice(self, id: str) -> dict:
        invoice = dict(self._get(self.state.invoices, id))
        items = [item for item in self.state.items.values() if item["invoice"] == id]
        total = sum(item["amount"] for item in items)
        invoice.update(subtotal=total, total=total, amount_due=total)
        invoice["lines"] = {
            "object": "list",
            "data": [
                {"object": "line_item", "amount": i["amount"], "description": i["description"]} for i in items
            ],
            "has_more": False,
            "url": f"/v1/invoices/{id}/lines",
        }
        return invoice

    def _create_item(self, params: dict) -> dict:
        self._require(params, "customer", "amount", "currency")
        self._get(self.state.customers, params["customer"])
        if params.get("invoice"):
            invoice = self._get(self.state.invoices, params["invoice"])
            if invoice["status"] != "draft":
                raise StripeError(
                    400, "invalid_request_error", "Invoice is not editable.", "invoice_not_editable"
                )
            if invoice["customer"] != params["customer"] or invoice["currency"] != params["currency"]:
                raise StripeError(400, "invalid_request_error", "Customer or currency mismatch.")
        try:
            amount = int(params["amount"])
        except ValueError:
            raise StripeError(
                400, "invalid_request_error", "Invalid integer: amount", param="amount"
            ) from None
        item = {
            "id": self._new_id("ii"),
            "object": "invoiceitem",
            "customer": params["customer"],
            "invoice": params.get("invoice"),
            "amount": amount,
            "currency": params["currency"],
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
        }
        self.state.items[item["id"]] = item
        return item

    def _list_items(self, params: dict) -> dict:
        items = [
            i
            for i in self.state.items.values()
            if not params.get("invoice") or i["invoice"] == params["invoice"]
        ]
        return {"object": "list", "data": items, "has_more": False, "url": "/v1/invoiceitems"}

    def _finalize(self, params: dict, id: str) -> dict:
        invoice = self._get(self.state.invoices, id)
        if invoice["status"] != "draft":
            raise StripeError(
                400, "invalid_request_error", "This invoice is already finalized.", "invoice_not_editable"
            )
        invoice["status"] = "open"
        invoice["number"] = f"FAKE-{len(self.state.invoices):04d}"
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.test/i/{id}"
        return self._invoice(id)

    def _send(self, params: dict, id: str) -> dict:
        invoice = self._get(self.state.invoices, id)
        if invoice["status"] != "open":
            raise StripeError(400, "invalid_request_error", "You can only send open invoices.")
        self.state.sent.append(id)
        return self._invoice(id)

    def _pay(self, params: dict, id: str) -> dict:
        invoice = self._get(self.state.invoices, id)
        out_of_band = params.get("paid_out_of_band") == "true"
        self._settle_payment(invoice, "out_of_band" if out_of_band else "customer")
        invoice["paid_out_of_band"] = out_of_band
        return self._invoice(id)

    def _settle_payment(self, invoice: dict, how: str) -> None:
        if invoice["status"] == "paid":
            raise StripeError(
                400, "invalid_request_error", "Invoice is already paid.", "invoice_already_paid"
            )
        if invoice["status"] not in ("open", "uncollectible"):
            raise StripeError(
                400, "invalid_request_error", f"You cannot pay an invoice that is {invoice['status']}."
            )
        invoice["status"] = "paid"
        invoice["status_transitions"] = {"paid_at": int(time.time())}
        self.state.payments.append((invoice["id"], how))

    def _void(self, params: dict, id: str) -> dict:
        invoice = self._get(self.state.invoices, id)
        if invoice["status"] not in ("open", "uncollectible"):
            raise StripeError(
                400,
                "invalid_request_error",
                f"You can only void open invoices; this one is {invoice['status']}.",
            )
        invoice["status"] = "void"
        return self._invoice(id)

    def _delete_invoice(self, params: dict, id: str) -> dict:
        invoice = self._get(self.state.invoices, id)
        if invoice["status"] != "draft":
            raise StripeError(400, "invalid_request_error", "You can only delete draft invoices.")
        del self.state.invoices[id]
        return {"id": id, "object": "invoice", "deleted": True}

    # ------------------------------------------------------------------ the customer's side

    def customer_pays(self, id: str) -> bool:
        """The customer pays on the hosted invoice page; False when Stripe refuses (not payable)."""
        with self.lock:
            try:
                self._settle_payment(self._get(self.state.invoices, id), "customer")
            except StripeError:
                return False
            return True
