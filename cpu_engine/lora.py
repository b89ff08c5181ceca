"""LoRA adapters in the CPU engine: loaded and unloaded at run time, served by name, as vLLM does.

``python -m cpu_engine ... --max-loras N [--max-cpu-loras M] [--max-lora-rank R]`` turns this on.
It then takes vLLM's runtime routes with vLLM's bodies and answers — ``POST /v1/load_lora_adapter``
``{"lora_name", "lora_path"}`` and ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``, behind the
worker key like every ``/v1`` route — serves ``model=<lora_name>`` on chat and completions, lists
loaded adapters in ``/v1/models`` with ``parent`` = the base, and exports vLLM's
``vllm:lora_requests_info`` gauge (labels ``running_lora_adapters``, ``waiting_lora_adapters``,
``max_lora``), which the gateway's LoRA-affinity routing reads.

Beyond vLLM's body, the load route takes an optional ``expected_manifest`` (an ``integrity``
manifest: what the registry recorded when the adapter became ready; the gateway sends it to CPU
engines only). The folder is then verified against it before anything is loaded, and a folder whose
files changed, went missing or were added is refused with a 400 naming them
(``adapter_verification_failed``): the gateway cannot read a node's files, the engine can.

The limits mean what they mean in vLLM: at most ``max_loras`` distinct adapters run at once
(requests for another adapter wait, and show under ``waiting_lora_adapters``); at most
``max_cpu_loras`` adapters are kept loaded, and loading one more evicts the least recently used
adapter that no request is using — a request for an evicted adapter then gets vLLM's 404
"model does not exist", which tells the gateway to load it again.

How: the adapters are PEFT LoRA layers over a second module tree that shares every weight tensor
with the base model (a ``deepcopy`` whose memo maps each parameter to itself: no extra memory for
the base). The base model keeps serving plain requests on transformers' continuous-batching loop,
which packs every request into one forward pass and has no per-request adapter; adapter requests
therefore run on their own decode thread here, one token per running request per round (so
concurrent adapter requests progress together), with a KV cache per request. Loading, unloading
and every forward pass take one lock, so PEFT's module dictionaries never change under a pass.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import PlainTextResponse
from prometheus_client.core import GaugeMetricFamily

from cpu_engine.backends import SamplingParams, Step
from cpu_engine.errors import InputError
from integrity import Manifest, VerificationFailed, verify_folder

logger = logging.getLogger("berth.cpu_engine.lora")

# vLLM 0.33's --max-lora-rank choices.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(eq=False)
class Adapter:
    name: str  # the lora_name clients send as "model"
    path: str
    rank: int
    internal: str  # PEFT's adapter name (module-dict keys may not hold "." or "/")
    created: int = field(default_factory=lambda: int(time.time()))
    active: int = 0  # requests using it now
    removed: bool = False  # unloaded or evicted while requests still used it: freed when they end


@dataclass(eq=False)
class _Sequence:
    adapter: Adapter
    prompt_ids: list[int]
    params: SamplingParams
    push: Callable[[Any], object]  # hands a token id, or an exception, to the request's event loop
    eos: frozenset[int]
    cache: Any = None
    last: int | None = None
    produced: int = 0
    started: bool = False
    cancelled: bool = False
    generator: Any = None


class LoraManager:
    """The loaded adapters of one engine, their LRU, and the decode thread that serves them."""

    def __init__(
        self, backend: Any, *, served_name: str, max_loras: int, max_cpu_loras: int | None, max_lora_rank: int
    ):
        if max_loras < 1:
            raise ValueError("max_loras must be at least 1")
        if max_cpu_loras is not None and max_cpu_loras < max_loras:
            raise ValueError("max_cpu_loras must be at least max_loras")
        self.backend = backend
        self.served_name = served_name
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras or max_loras
        self.max_lora_rank = max_lora_rank
        self.adapters: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first
        self._ids = itertools.count()
        self._peft: Any = None
        self._model_lock = threading.Lock()  # the PEFT model: loads, deletes and forward passes
        self._load_lock = asyncio.Lock()  # one load at a time, so capacity checks hold
        self._cond = threading.Condition()  # the two queues below
        self._waiting: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="lora-decode", daemon=True)
        self._thread.start()

    # -- registry ------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.adapters

    def cards(self, created: int) -> list[dict[str, Any]]:
        """``/v1/models`` entries as vLLM writes them for LoRA modules."""
        return [
            {
                "id": a.name,
                "object": "model",
                "created": a.created,
                "owned_by": "vllm",
                "root": a.path,
                "parent": self.served_name,
                "max_model_len": None,
                "permission": [],
            }
            for a in self.adapters.values()
        ]

    async def load(self, name: str, path: str, *, manifest: Manifest | None = None) -> None:
        if name == self.served_name:
            raise InputError(f"The lora adapter name '{name}' is the base model's name.", "lora_name")
        async with self._load_lock:
            if name in self.adapters:
                raise InputError(f"The lora adapter '{name}' has already been loaded.", "lora_name")
            if manifest is not None:
                await asyncio.to_thread(verify_adapter, path, manifest)
            rank = await asyncio.to_thread(self._check, path)
            self._make_room()
            adapter = Adapter(name=name, path=path, rank=rank, internal=f"lora{next(self._ids)}")
            await asyncio.to_thread(self._load_weights, adapter)
            self.adapters[name] = adapter
        logger.info("loaded LoRA adapter %s (rank %s) from %s", name, rank, path)

    def unload(self, name: str) -> None:
        adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise InputError(f"The lora adapter '{name}' cannot be found.", "lora_name", status=404)
        self._free(adapter)
        logger.info("unloaded LoRA adapter %s", name)

    def _check(self, path: str) -> int:
        """The adapter's rank, after checking that ``path`` holds a LoRA this engine can take."""
        from peft import PeftConfig

        try:
            config = PeftConfig.from_pretrained(path)
        except Exception as exc:  # a missing folder, no adapter_config.json, an unknown Hub repo
            raise InputError(f"Could not load a LoRA adapter from '{path}': {exc}", "lora_path") from exc
        if str(getattr(config, "peft_type", "")).upper().split(".")[-1] != "LORA":
            raise InputError(f"'{path}' is not a LoRA adapter (PEFT type {config.peft_type}).", "lora_path")
        rank = int(getattr(config, "r", 0) or 0)
        ranks = [rank, *(getattr(config, "rank_pattern", None) or {}).values()]
        if max(ranks) > self.max_lora_rank:
            raise InputError(
                f"LoRA rank {max(ranks)} is greater than max_lora_rank {self.max_lora_rank}.", "lora_path"
            )
        return rank

    def _make_room(self) -> None:
        """Evict least recently used idle adapters until one more fits in ``max_cpu_loras``."""
        while len(self.adapters) >= self.max_cpu_loras:
            idle = next((a for a in self.adapters.values() if a.active == 0), None)
            if idle is None:
                raise InputError(
                    f"All {self.max_cpu_loras} LoRA slots hold adapters in use; retry shortly.",
                    "lora_name",
                    status=503,
                    code="lora_slots_busy",
                )
            del self.adapters[idle.name]
            self._free(idle)
            logger.info("evicted LoRA adapter %s (least recently used)", idle.name)

    def _free(self, adapter: Adapter) -> None:
        adapter.removed = True
        if adapter.active == 0:
            self._delete_weights(adapter)

    def _load_weights(self, adapter: Adapter) -> None:
        from peft import PeftModel

        with self._model_lock:
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self._shadow(), adapter.path, adapter_name=adapter.internal, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(adapter.path, adapter_name=adapter.internal, is_trainable=False)
            except Exception as exc:  # weights that do not fit the base model
                raise InputError(
                    f"Could not load the LoRA adapter at '{adapter.path}': {exc}", "lora_path"
                ) from exc
            self._peft.eval()

    def _delete_weights(self, adapter: Adapter) -> None:
        with self._model_lock:
            if self._peft is not None and adapter.internal in self._peft.peft_config:
                self._peft.delete_adapter(adapter.internal)

    def _shadow(self) -> Any:
        """A second module tree over the base model's own weight tensors (nothing copied)."""
        model = self.backend.model
        memo: dict[int, Any] = {id(p): p for p in model.parameters()}
        memo.update({id(b): b for b in model.buffers()})
        shadow = copy.deepcopy(model, memo)
        if str(getattr(shadow.config, "_attn_implementation", "")).startswith("paged"):
            shadow.config._attn_implementation = "sdpa"
        return shadow.eval()

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, name: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Step]:
        """Like ``GenerationBackend.generate``, through adapter ``name``; closing the iterator cancels."""
        import torch
        from tokenizers.decoders import DecodeStream

        adapter = self.adapters.get(name)
        if adapter is None:
            raise InputError(
                f"The model `{name}` does not exist.", "model", status=404, code="model_not_found"
            )
        self.adapters.move_to_end(name)  # most recently used
        adapter.active += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        backend = self.backend
        greedy = params.temperature <= 1e-5
        sequence = _Sequence(
            adapter=adapter,
            prompt_ids=list(prompt_ids),
            params=params,
            push=lambda item: loop.call_soon_threadsafe(queue.put_nowait, item),
            eos=frozenset() if params.ignore_eos else frozenset(backend.eos_token_ids),
            generator=None if greedy else torch.Generator().manual_seed(uuid.uuid4().int & 0xFFFFFFFF),
        )
        decoder = DecodeStream([], skip_special_tokens=True)
        rust_tokenizer: Any = backend.tokenizer._tokenizer
        hold = max((len(s) for s in params.stop), default=1) - 1
        text, sent, produced = "", 0, 0
        backend.waiting += 1
        stage = "waiting"
        with self._cond:
            self._waiting.append(sequence)
            self._cond.notify()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"LoRA generation failed: {item}") from item
                if stage == "waiting":
                    stage = "running"
                    backend.waiting -= 1
                    backend.running += 1
                token, done = item
                produced += 1
                searched_to = len(text)
                text += decoder.step(rust_tokenizer, token) or ""
                if params.stop:
                    hits = [
                        i for i in (text.find(s, max(0, searched_to - hold)) for s in params.stop) if i >= 0
                    ]
                    if hits:
                        yield Step(
                            text=text[sent : min(hits)], completion_tokens=produced, finish_reason="stop"
                        )
                        return
                if done:
                    reason = "stop" if token in sequence.eos else "length"
                    yield Step(text=text[sent:], completion_tokens=produced, finish_reason=reason)
                    return
                safe = len(text) - hold
                if safe > sent:
                    piece, sent = text[sent:safe], safe
                    yield Step(text=piece, completion_tokens=produced)
        finally:
            sequence.cancelled = True
            if stage == "waiting":
                backend.waiting -= 1
            else:
                backend.running -= 1
            adapter.active -= 1
            if adapter.removed and adapter.active == 0:
                await asyncio.to_thread(self._delete_weights, adapter)

    # -- the decode thread ---------------------------------------------------------------------

    def _admit(self) -> None:
        """Move waiting requests to running while at most ``max_loras`` adapters run at once."""
        running = {s.adapter.name for s in self._running}
        still = []
        # vLLM's priority scheduling: lower priority first, arrival order within one (a stable sort).
        self._waiting.sort(key=lambda s: s.params.priority)
        for sequence in self._waiting:
            if sequence.cancelled:
                continue
            if sequence.adapter.name in running or len(running) < self.max_loras:
                running.add(sequence.adapter.name)
                self._running.append(sequence)
            else:
                still.append(sequence)
        self._waiting = still

    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                self._running = [s for s in self._running if not s.cancelled]
                self._admit()
                while not self._stopped and not self._running:
                    self._cond.wait()
                    self._admit()
                if self._stopped:
                    return
                batch = list(self._running)
            for sequence in batch:
                if sequence.cancelled:
                    continue
                try:
                    with torch.inference_mode():
                        token, done = self._step(sequence)
                except Exception as exc:  # reported to the request; the thread serves the others
                    logger.exception("LoRA decode step failed")
                    sequence.cancelled = True
                    sequence.push(exc)
                    continue
                if done:
                    sequence.cancelled = True
                sequence.push((token, done))

    def _step(self, sequence: _Sequence) -> tuple[int, bool]:
        import torch

        if sequence.cache is None:
            from transformers import DynamicCache

            sequence.cache = DynamicCache()
            ids = torch.tensor([sequence.prompt_ids])
        else:
            ids = torch.tensor([[sequence.last]])
        with self._model_lock:
            peft = self._peft
            peft.set_adapter(sequence.adapter.internal)
            logits = peft(input_ids=ids, past_key_values=sequence.cache, use_cache=True).logits[0, -1]
        token = _sample(logits.float(), sequence.params, sequence.generator)
        sequence.last = token
        sequence.produced += 1
        done = token in sequence.eos or sequence.produced >= sequence.params.max_tokens
        return token, done

    # -- metrics and lifecycle -----------------------------------------------------------------

    def collect(self) -> list[GaugeMetricFamily]:
        """``vllm:lora_requests_info``, as vLLM sets it: value = now, the adapters in the labels."""
        with self._cond:
            running = sorted({s.adapter.name for s in self._running if not s.cancelled})
            waiting = sorted({s.adapter.name for s in self._waiting if not s.cancelled} - set(running))
        family = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )
        family.add_metric([str(self.max_loras), ",".join(waiting), ",".join(running)], time.time())
        return [family]

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=2)


def _sample(logits: Any, params: SamplingParams, generator: Any) -> int:
    import torch

    if params.temperature <= 1e-5:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        cut = cumulative - torch.softmax(ordered, dim=-1) > params.top_p
        logits = logits.scatter(0, order, ordered.masked_fill(cut, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def verify_adapter(path: str, manifest: Manifest) -> None:
    """Refuse ``path`` unless its files are exactly ``manifest``'s (every byte rehashed)."""
    mismatches = verify_folder(path, manifest, cache=None)
    if mismatches:
        failure = VerificationFailed(folder=path, mismatches=mismatches)
        logger.error("refused LoRA adapter at %s: %s", path, failure)
        raise InputError(
            f"The LoRA adapter at '{path}' does not match its manifest: "
            + "; ".join(str(m) for m in mismatches[:5]),
            "lora_path",
            code="adapter_verification_failed",
        )


# -- the HTTP side ---------------------------------------------------------------------------------


def manager_of(request: Request) -> LoraManager:
    return request.app.state.engine.lora


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError("request body must be a JSON object")
    return data


async def _fields(request: Request, *names: str) -> list[str]:
    data = await _body(request)
    values = []
    for name in names:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise InputError(f"'{name}' is required (a non-empty string).", name)
        values.append(value)
    return values


def _expected_manifest(data: dict[str, Any]) -> Manifest | None:
    raw = data.get("expected_manifest")
    if raw is None:
        return None
    try:
        return Manifest.from_dict(raw)
    except ValueError as exc:
        raise InputError(f"'expected_manifest' is not a manifest: {exc}", "expected_manifest") from exc


async def load_lora_adapter(request: Request) -> PlainTextResponse:
    name, path = await _fields(request, "lora_name", "lora_path")
    manifest = _expected_manifest(await _body(request))
    await manager_of(request).load(name, path, manifest=manifest)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora_adapter(request: Request) -> PlainTextResponse:
    (name,) = await _fields(request, "lora_name")
    manager_of(request).unload(name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


class _Collector:
    def __init__(self, manager: LoraManager):
        self.manager = manager

    def collect(self) -> list[GaugeMetricFamily]:
        return self.manager.collect()


def install(app: Any, manager: LoraManager) -> None:
    """Serve adapters on ``app``: the engine dispatches to ``manager``, vLLM's two routes, the gauge."""
    engine = app.state.engine
    engine.lora = manager
    engine.metrics.registry.register(_Collector(manager))
    app.add_api_route("/v1/load_lora_adapter", load_lora_adapter, methods=["POST"], response_model=None)
    app.add_api_route("/v1/unload_lora_adapter", unload_lora_adapter, methods=["POST"], response_model=None)
