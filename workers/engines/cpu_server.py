"""The CPU engine's HTTP server: vLLM's OpenAI-compatible surface over ``cpu_backends``.

Run as ``python -m workers.engines.cpu_server --task chat --model DIR --served-model-name NAME
--host H --port P`` (or ``--fd N``: serve on a bound socket inherited from the node agent) with the API key in ``VLLM_API_KEY`` (the variable ``vllm serve`` reads, and
unlike argv it does not show in ``ps``). ``workers.engines.cpu.build_launch`` writes that command.

Every difference from vLLM that a client could see is decided here, in one place: auth on
``/v1``, OpenAI-shaped errors, ``stream_options`` (``include_usage`` and
``continuous_usage_stats``), the ``[DONE]`` terminator, ``/v1/models`` and the ``vllm:*`` metrics.
The process imports no Django, so it is ready as soon as the model is loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workers.engines.cpu_backends import InputError, SamplingParams

logger = logging.getLogger("berth.cpu_engine")

API_KEY_ENV = "VLLM_API_KEY"


# -- request bodies (unknown fields are accepted and ignored, as vLLM does) ------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    ignore_eos: bool = False  # vLLM's sampling extension
    # vLLM's prefix-cache isolation: requests with different salts never share cached blocks.
    cache_salt: str | None = None

    @field_validator("cache_salt", mode="before")
    @classmethod
    def _salt(cls, value):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError("Parameter 'cache_salt' must be a non-empty string if provided.")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError("only text content parts are supported by this model", "messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# -- errors ----------------------------------------------------------------------------------------


def error_body(message: str, *, type_: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_response(status: int, message: str, *, type_: str, param=None, code=None):
    return JSONResponse(error_body(message, type_=type_, param=param, code=code), status_code=status)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _error_id(request: Request) -> str:
    """The gateway's ``X-Request-Id`` when it is a plain token, so both logs share one id."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else f"engine-{uuid.uuid4().hex}"


def _internal_message(error_id: str) -> str:
    return f"The engine could not complete this request (request id {error_id}). Please try again."


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """The first problem, phrased like vLLM's 400s, and the top-level field it concerns."""
    first = exc.errors()[0]
    loc = first.get("loc", ())
    where = ".".join(str(part) for part in loc)
    message = first.get("msg", "invalid value")
    return (f"{where}: {message}" if where else message), (str(loc[0]) if loc else None)


# -- metrics ---------------------------------------------------------------------------------------


class Metrics:
    """The subset of vLLM's V1 metrics a router or autoscaler reads, under the same names."""

    def __init__(self, served_name: str, backend):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        self.labels = {"model_name": served_name, "engine": "0"}
        running = Gauge(
            "vllm:num_requests_running",
            "Requests in model execution batches.",
            labels,
            registry=self.registry,
        )
        running.labels(**self.labels).set_function(lambda: backend.running)
        waiting = Gauge(
            "vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=self.registry
        )
        waiting.labels(**self.labels).set_function(lambda: backend.waiting)
        kv = Gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            labels,
            registry=self.registry,
        )
        kv.labels(**self.labels).set_function(backend.kv_cache_usage)
        prefix_cache = getattr(backend, "prefix_cache", None)
        if prefix_cache is not None:
            self.registry.register(_PrefixCacheCollector(prefix_cache, self.labels))
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", labels, registry=self.registry
        ).labels(**self.labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", labels, registry=self.registry
        ).labels(**self.labels)
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=self.registry,
        )
        for reason in ("stop", "length", "abort", "error"):
            self.success.labels(**self.labels, finished_reason=reason)
        buckets = (
            0.001,
            0.005,
            0.01,
            0.02,
            0.04,
            0.06,
            0.08,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            20.0,
            40.0,
            80.0,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=buckets,
            registry=self.registry,
        ).labels(**self.labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            labels,
            buckets=buckets,
            registry=self.registry,
        ).labels(**self.labels)

    def finished(self, reason: str, *, prompt_tokens: int, completion_tokens: int, started: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.success.labels(**self.labels, finished_reason=reason).inc()
        self.e2e.observe(time.monotonic() - started)


class _PrefixCacheCollector:
    """``vllm:prefix_cache_queries_total`` and ``vllm:prefix_cache_hits_total``, in tokens, as vLLM
    counts them: a router or a test reads the hit rate, and cache isolation, from them."""

    def __init__(self, counts, labels: dict[str, str]):
        self.counts, self.labels = counts, labels

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        names = list(self.labels)
        values = [self.labels[name] for name in names]
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels=names,
        )
        queries.add_metric(values, self.counts.queries)
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", labels=names
        )
        hits.add_metric(values, self.counts.hits)
        return [queries, hits]


# -- the app ---------------------------------------------------------------------------------------


class ApiKeyMiddleware:
    """Bearer-key check with the scope of vLLM's ``--api-key``: only ``/v1`` paths are guarded, so
    ``/health``, ``/metrics`` and ``/tokenize`` stay open (the worker port is private to Berth).
    Plain ASGI, so streamed responses pass through untouched."""

    def __init__(self, app, *, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1") and scope["method"] != "OPTIONS":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error_response(
                    401, "Incorrect API key provided.", type_="invalid_request_error", code="invalid_api_key"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}


def _sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def create_app(*, task: str, backend, served_name: str, api_key: str | None):
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    app = FastAPI(title="Berth CPU engine", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(served_name, backend)
    created = int(time.time())
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    @app.exception_handler(InputError)
    async def input_error(_request, exc: InputError):
        type_ = "invalid_request_error"
        return _error_response(exc.status, exc.message, type_=type_, param=exc.param, code=exc.code)

    @app.exception_handler(404)
    async def not_found(_request, _exc):
        return _error_response(404, "Not found.", type_="invalid_request_error", code="not_found")

    @app.exception_handler(405)
    async def not_allowed(_request, _exc):
        return _error_response(405, "Method not allowed.", type_="invalid_request_error")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        # The exception text and traceback go to the engine log only: they can hold paths, model
        # internals or another request's data, and the caller can do nothing with them.
        error_id = _error_id(request)
        logger.error("request %s failed", error_id, exc_info=exc)
        return _error_response(500, _internal_message(error_id), type_="internal_server_error")

    async def parse(request: Request, model_cls: type[BaseModel]):
        try:
            raw = await request.body()
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InputError("request body must be a JSON object")
        try:
            body = model_cls.model_validate(data)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            raise InputError(message, param) from exc
        if body.model is not None and body.model != served_name:
            raise InputError(
                f"The model `{body.model}` does not exist.", "model", status=404, code="model_not_found"
            )
        return body

    @app.get("/health")
    async def health():
        return Response(status_code=200 if backend.is_alive() else 503)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        card = {
            "id": served_name,
            "object": "model",
            "created": created,
            "owned_by": "berth",
            "root": str(backend.model_path),
            "parent": None,
            "max_model_len": backend.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": False,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return {"object": "list", "data": [card]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        try:
            data = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not (isinstance(data.get("prompt"), str) or "messages" in data):
            raise InputError("send 'prompt' (a string) or 'messages'", "prompt")
        if data.get("model") not in (None, served_name):
            raise InputError(
                f"The model `{data['model']}` does not exist.", "model", status=404, code="model_not_found"
            )
        if "messages" in data:
            if task == "embedding":
                raise InputError("this model has no chat template", "messages")
            try:
                messages = [ChatMessage.model_validate(m) for m in data["messages"]]
            except (ValidationError, TypeError) as exc:
                raise InputError("messages must be a list of chat messages", "messages") from exc
            ids = backend.chat_prompt_ids([{"role": m.role, "content": m.text()} for m in messages])
        else:
            add_special = bool(data.get("add_special_tokens", True))
            ids = list(backend.tokenizer(data["prompt"], add_special_tokens=add_special)["input_ids"])
        return {"count": len(ids), "max_model_len": backend.max_model_len, "tokens": ids}

    if task == "embedding":

        @app.post("/v1/embeddings")
        async def embeddings(request: Request):
            body: EmbeddingRequest = await parse(request, EmbeddingRequest)
            texts = [body.input] if isinstance(body.input, str) else body.input
            if not texts:
                raise InputError("input must not be empty", "input")
            if not all(isinstance(t, str) for t in texts):
                raise InputError(
                    "token-array input is not supported by the CPU embedding engine; send a string or a list "
                    "of strings",
                    "input",
                )
            if any(t == "" for t in texts):
                raise InputError("input strings must not be empty", "input")
            if len(texts) > 2048:
                raise InputError("at most 2048 inputs per request", "input")
            if body.dimensions is not None and body.dimensions != backend.dimensions:
                raise InputError(
                    f"this model only produces {backend.dimensions}-dimensional embeddings", "dimensions"
                )
            started = time.monotonic()
            lengths = backend.count_tokens(texts)
            vectors = await backend.embed(texts)
            data = []
            for i, vector in enumerate(vectors):
                if body.encoding_format == "base64":
                    embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
                else:
                    embedding = vector.tolist()
                data.append({"index": i, "object": "embedding", "embedding": embedding})
            prompt_tokens = sum(lengths)
            metrics.finished("stop", prompt_tokens=prompt_tokens, completion_tokens=0, started=started)
            return {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": served_name,
                "data": data,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens,
                    "completion_tokens": 0,
                },
            }

        return app

    def sampling(body: _Sampling, prompt_len: int, requested_max: int | None) -> SamplingParams:
        if body.n != 1:
            raise InputError("n > 1 is not supported by the CPU engine", "n")
        if body.logprobs:
            raise InputError("logprobs are not supported by the CPU engine", "logprobs")
        if body.stream_options is not None and not body.stream:
            raise InputError("Stream options can only be defined when `stream=True`.", "stream_options")
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        temperature = 1.0 if body.temperature is None else body.temperature
        top_k = body.top_k if body.top_k and body.top_k > 0 else None
        return SamplingParams(
            max_tokens=backend.resolve_max_tokens(prompt_len, requested_max),
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=top_k,
            stop=tuple(s for s in stop if s),
            ignore_eos=body.ignore_eos,
        )

    async def run(
        request: Request,
        *,
        kind: str,
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool,
        options,
        cache_salt: str | None,
    ):
        request_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        started, created_at = time.monotonic(), int(time.time())  # one "created" for every chunk, as vLLM
        prompt_len = len(prompt_ids)
        chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        include_usage = bool(options and options.include_usage)
        continuous = include_usage and bool(options.continuous_usage_stats)
        steps = backend.generate(prompt_ids, params, cache_salt=cache_salt)

        def chunk(choice: dict | None, usage: dict | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": request_id,
                "object": chunk_object,
                "created": created_at,
                "model": served_name,
                "choices": [choice] if choice is not None else [],
            }
            if usage is not None:
                payload["usage"] = usage
            return _sse(payload)

        def choice(text: str | None, finish: str | None, *, role: bool = False) -> dict:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
                if text:
                    delta["content"] = text
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if stream:

            async def events() -> AsyncIterator[bytes]:
                produced, reason, first = 0, "abort", True
                try:
                    if kind == "chat":
                        yield chunk(
                            choice(None, None, role=True), _usage(prompt_len, 0) if continuous else None
                        )
                    async for step in steps:
                        if first:
                            metrics.ttft.observe(time.monotonic() - started)
                            first = False
                        produced = step.completion_tokens
                        if step.finish_reason is not None:
                            reason = step.finish_reason
                        # As vLLM: the last piece of text rides on the chunk that carries finish_reason.
                        running = _usage(prompt_len, produced) if continuous else None
                        yield chunk(choice(step.text, step.finish_reason), running)
                    if include_usage:
                        yield chunk(None, _usage(prompt_len, produced))
                    yield b"data: [DONE]\n\n"
                except Exception:  # mid-stream failure: the status line is gone, say it in-band
                    reason = "error"
                    error_id = _error_id(request)
                    logger.exception("generation of %s failed", error_id)
                    yield _sse(error_body(_internal_message(error_id), type_="internal_server_error"))
                    yield b"data: [DONE]\n\n"
                finally:
                    await steps.aclose()  # cancels generation when the client went away
                    metrics.finished(
                        reason, prompt_tokens=prompt_len, completion_tokens=produced, started=started
                    )

            return StreamingResponse(events(), media_type="text/event-stream")

        texts, produced, reason = [], 0, "abort"

        async def collect():
            nonlocal produced, reason
            async for step in steps:
                if not texts:
                    metrics.ttft.observe(time.monotonic() - started)
                texts.append(step.text)
                produced = step.completion_tokens
                if step.finish_reason:
                    reason = step.finish_reason

        async def watch_disconnect():
            # The body has been read, so the next ASGI message can only be the disconnect.
            while (await request.receive())["type"] != "http.disconnect":
                pass

        collector = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not collector.done():
                collector.cancel()  # the client left: stop generating for nobody
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            await steps.aclose()
            failed = collector.done() and not collector.cancelled() and collector.exception() is not None
            metrics.finished(
                "error" if failed else reason,
                prompt_tokens=prompt_len,
                completion_tokens=produced,
                started=started,
            )
        if collector.cancelled():
            return Response(status_code=499)
        collector.result()  # re-raise a generation failure as a 500
        text = "".join(texts)
        if kind == "chat":
            out_choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": reason,
            }
        else:
            out_choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return JSONResponse(
            {
                "id": request_id,
                "object": "chat.completion" if kind == "chat" else "text_completion",
                "created": created_at,
                "model": served_name,
                "choices": [out_choice],
                "usage": _usage(prompt_len, produced),
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body: ChatRequest = await parse(request, ChatRequest)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt_ids = backend.chat_prompt_ids(messages)
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = sampling(body, len(prompt_ids), requested)
        return await run(
            request,
            kind="chat",
            prompt_ids=prompt_ids,
            params=params,
            stream=body.stream,
            options=body.stream_options,
            cache_salt=body.cache_salt,
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        body: CompletionRequest = await parse(request, CompletionRequest)
        if body.echo or body.suffix:
            raise InputError(
                "echo and suffix are not supported by the CPU engine", "echo" if body.echo else "suffix"
            )
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise InputError("the CPU engine takes one prompt per request", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("prompt must not be empty", "prompt")
            prompt_ids = backend.text_prompt_ids(prompt)
        else:
            if not prompt:
                raise InputError("prompt must not be empty", "prompt")
            prompt_ids = list(prompt)
            backend.check_token_ids(prompt_ids)
        default_max = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's completions default
        params = sampling(body, len(prompt_ids), default_max)
        return await run(
            request,
            kind="completion",
            prompt_ids=prompt_ids,
            params=params,
            stream=body.stream,
            options=body.stream_options,
            cache_salt=body.cache_salt,
        )

    return app


# -- process entry point ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workers.engines.cpu_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--task", choices=["chat", "completion", "embedding"], required=True)
    parser.add_argument("--model", required=True, help="local model folder (no downloads)")
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--fd",
        type=int,
        default=None,
        help="serve on this inherited, bound socket instead of binding --host/--port (the node agent's)",
    )
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=16, help="requests batched together")
    parser.add_argument(
        "--kv-cache-tokens", type=int, default=32768, help="paged KV-cache capacity, in tokens"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--graceful-shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds that open requests get to finish after SIGTERM before they are cancelled",
    )
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import uvicorn

    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = Path(args.model).expanduser().resolve()
    if not (model_path / "config.json").is_file():
        sys.exit(f"cpu_server: no model folder at {model_path} (config.json missing)")

    from workers.engines.cpu_backends import EmbeddingBackend, GenerationBackend

    if args.task == "embedding":
        backend: Any = EmbeddingBackend(model_path, max_model_len=args.max_model_len)
    else:
        backend = GenerationBackend(
            model_path,
            kv_cache_tokens=args.kv_cache_tokens,
            max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len,
        )
    app = create_app(
        task=args.task,
        backend=backend,
        served_name=args.served_model_name,
        api_key=os.environ.get(API_KEY_ENV),
    )
    try:
        # Requests are accepted only now, after the model has loaded: /health is 200 from its first
        # answer.
        # On SIGTERM uvicorn stops accepting, lets open requests run for the grace period, then
        # cancels them, which cancels their generation (the node agent drains before stopping).
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            timeout_graceful_shutdown=args.graceful_shutdown_timeout,
        )
        # An inherited socket (--fd) is already bound and may already queue connections; they are
        # accepted from now on. socket(fileno=) reads its real family, unlike uvicorn's own --fd.
        sockets = [socket.socket(fileno=args.fd)] if args.fd is not None else None
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        backend.stop()


if __name__ == "__main__":
    main()
