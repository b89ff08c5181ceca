"""The model side of the CPU engine: token generation with continuous batching, and embeddings.

Nothing here knows about HTTP; ``cpu_engine.routes`` turns these into vLLM's API.

Scheduling follows vLLM's ``--scheduling-policy priority``: at most ``max_num_seqs`` requests are
in the batching loop at once, and the rest wait in the engine (``AdmissionGate``) ordered by
(``priority``, arrival) — lower first, first-come-first-served within a priority — so a request
the gateway sends at a better tier starts before best-effort work already queued. Requests
already in the loop run to the end (vLLM also preempts them; this engine does not). The waiting
and running gauges count the gate's queue as waiting, as vLLM's scheduler queue is.

Generation runs on transformers' own continuous-batching manager (the batching core behind
``transformers serve --continuous-batching``): one background thread steps every active request
together over a paged KV cache, so four concurrent requests cost little more than one. We size
that cache ourselves (``kv_cache_tokens``) instead of letting it claim a share of RAM, and sample
per request with ``cpu_engine.sampling`` (temperature, top-p, top-k, greedy at temperature 0), where
``transformers serve`` applies none of them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cpu_engine.errors import InputError

logger = logging.getLogger("berth.cpu_engine")

EMBED_BATCH = 64  # texts per forward pass; concurrent requests are packed up to this
PAGE_SIZE = 64  # tokens per KV-cache block: the prefix cache shares whole blocks only


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks, tests)
    priority: int = 0  # vLLM's request priority: lower is served first


@dataclass
class Step:
    """New text for one request, with running token counts."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # set on the last step: "stop" or "length"
    stop_sequence: str | None = None  # the stop string that ended it (Anthropic's stop_sequence)
    cached_tokens: int = 0  # prompt tokens the prefix cache served (usage's cached_tokens)


def _calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    from cpu_engine.tools import rendered_call

    text = [message.get("content") or ""]
    text += [rendered_call(c["function"]["name"], c["function"]["arguments"]) for c in calls]
    rest = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**rest, "content": "\n".join(t for t in text if t)}


class AdmissionGate:
    """At most ``limit`` requests admitted; the others wait, ordered by (priority, arrival).

    Lower priorities go first and equal ones in arrival order, as vLLM's priority scheduler. A
    waiter that is cancelled leaves the queue; one cancelled just after being admitted gives its
    place to the next.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.active = 0
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def queued(self) -> int:
        return sum(1 for _, _, future in self._queue if not future.done())

    async def acquire(self, priority: int = 0) -> None:
        if self.active < self.limit and not self._queue:
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # admitted, then cancelled before it could start
            else:
                future.cancel()
                self._admit()
            raise

    def release(self) -> None:
        self.active -= 1
        self._admit()

    def _admit(self) -> None:
        while self._queue and (self.active < self.limit or self._queue[0][2].done()):
            _, _, future = heapq.heappop(self._queue)
            if future.done():  # a waiter that went away
                continue
            self.active += 1
            future.set_result(None)


class GenerationBackend:
    def __init__(
        self, model_path: Path, *, kv_cache_tokens: int, max_num_seqs: int, max_model_len: int | None
    ):
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
            ContinuousBatchingConfig,
            GenerationConfig,
        )

        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.chat_template is None:
            logger.warning("model at %s has no chat template; /v1/chat/completions will fail", model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        config = self.model.config
        default_len: int = getattr(config, "max_position_embeddings", 2048)
        self.max_model_len = int(max_model_len or default_len)
        defaults = self.model.generation_config
        # vLLM reads generation_config.json the same way: its max_new_tokens is the default length.
        self.default_max_tokens = int(getattr(defaults, "max_new_tokens", None) or 256)
        eos = defaults.eos_token_id if defaults.eos_token_id is not None else config.eos_token_id
        self.eos_token_ids = {eos} if isinstance(eos, int) else set(eos or ())
        self.vocab_size = int(config.vocab_size)

        from cpu_engine import prefix_cache, sampling

        self._fast_sampling = sampling.available()
        if self._fast_sampling:
            # Greedy loop; sampling's processors add the randomness per request (Gumbel-max).
            shared = GenerationConfig(
                do_sample=False,
                max_new_tokens=self.default_max_tokens,
                eos_token_id=sorted(self.eos_token_ids) or -1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        else:
            # Stock per-request warpers are only built when the shared config has non-neutral
            # values; every request then overrides all three with its own.
            shared = GenerationConfig(
                do_sample=True,
                temperature=0.5,
                top_p=0.5,
                top_k=self.vocab_size - 1,
                max_new_tokens=self.default_max_tokens,
                eos_token_id=sorted(self.eos_token_ids) or -1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        # Prefix caching only where cache_salt can keep tenants apart (see cpu_engine.prefix_cache).
        self.prefix_caching = prefix_cache.supported()
        if not self.prefix_caching:
            logger.warning("prefix caching is off: this transformers release cannot salt it per request")
        self.prefix_cache = prefix_cache.PrefixCacheSalts()
        cb_config = ContinuousBatchingConfig(
            page_size=PAGE_SIZE,
            num_blocks=max(8, kv_cache_tokens // PAGE_SIZE),
            max_batch_tokens=max(256, min(2048, self.max_model_len)),
            max_requests_per_batch=max_num_seqs,
            per_request_processors=True,
            allow_block_sharing=self.prefix_caching,
        )
        self._cb = self.model.init_continuous_batching(
            generation_config=shared, continuous_batching_config=cb_config
        )
        if self.prefix_caching:
            self.prefix_cache.install(self._cb)
        if self._fast_sampling:
            sampling.install(self._cb)
        self._cb.start()
        self._ids = itertools.count()
        self.gate = AdmissionGate(max_num_seqs)
        self.waiting = 0  # queued at the gate or submitted, no token yet
        self.running = 0  # producing tokens

    # -- inputs --------------------------------------------------------------------------------

    def chat_prompt_ids(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The prompt of a conversation; ``tools`` (OpenAI function tools) reach templates that
        render them, as vLLM passes them, and templates without tool support ignore them."""
        template = self.tokenizer.chat_template
        if template is None:
            raise InputError("this model has no chat template; use /v1/completions", "messages")
        if "tool_calls" not in template:
            # A template without tool support would drop earlier calls: they become text.
            messages = [_calls_as_text(m) for m in messages]
        try:
            ids = self.tokenizer.apply_chat_template(
                messages,
                tools=cast(Any, tools or None),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        except Exception as exc:  # a template may raise anything on odd input (jinja errors included)
            raise InputError(f"could not apply the chat template: {exc}", "messages") from exc
        return list(ids)

    def text_prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def count_text_tokens(self, text: str) -> int:
        """Tokens of text the model would write (no special tokens)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_token_ids(self, ids: list[int]) -> None:
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise InputError(f"token ids must be in [0, {self.vocab_size})", "prompt")

    def resolve_max_tokens(self, prompt_len: int, requested: int | None) -> int:
        room = self.max_model_len - prompt_len
        if requested is None:
            if room < 1:
                raise InputError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                    f"request has {prompt_len} input tokens. Please reduce the length of the input messages.",
                    "messages",
                )
            return min(self.default_max_tokens, room)
        if prompt_len + requested > self.max_model_len:
            raise InputError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_len + requested} tokens ({prompt_len} in the messages, {requested} in the completion). "
                "Please reduce the length of the messages or completion.",
                "max_tokens",
            )
        return requested

    # -- generation ----------------------------------------------------------------------------

    def kv_cache_usage(self) -> float:
        processor = self._cb.batch_processor
        if processor is None:
            return 0.0
        try:
            return max(0.0, min(1.0, 1.0 - float(processor.cache.compute_free_capacity())))
        except Exception:  # metrics must never break on an internal API change
            return 0.0

    def is_alive(self) -> bool:
        return self._cb.background_thread_status.fatal_error is None

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, *, cache_salt: str | None = None
    ) -> AsyncIterator[Step]:
        """Yield text steps until the request finishes; closing the iterator cancels it.

        Requests share cached prompt blocks only when their ``cache_salt`` is equal (or both
        have none)."""
        from tokenizers.decoders import DecodeStream

        request_id = f"cpu-{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        # Greedy (temperature 0, as OpenAI and vLLM read it).
        greedy = params.temperature <= 1e-5
        if self._fast_sampling:
            sampling: dict[str, Any] = {
                "temperature": 1.0 if greedy else float(params.temperature),
                "top_k": int(params.top_k or 0),
                "top_p": float(params.top_p),
                "greedy": greedy,
            }
        else:  # stock warpers: greedy is top-k 1
            sampling = {
                "temperature": 1.0 if greedy else float(params.temperature),
                "top_p": float(params.top_p),
                "top_k": 1 if greedy else int(params.top_k or self.vocab_size),
            }
        # Waiting until the gate admits it into the batching loop (see AdmissionGate).
        self.waiting += 1
        try:
            await self.gate.acquire(params.priority)
        except BaseException:
            self.waiting -= 1
            raise
        try:
            self.prefix_cache.add(request_id, cache_salt)  # before the batching loop can see it
            self._cb.register_result_handler(request_id, queue.put_nowait)
            submitted = self._cb.add_request(
                prompt_ids,
                request_id=request_id,
                max_new_tokens=params.max_tokens,
                streaming=True,
                eos_token_id=-1 if params.ignore_eos else (sorted(self.eos_token_ids) or -1),
                **sampling,
            )
            if submitted is None:
                self._forget(request_id)
                raise RuntimeError("the generation loop is not accepting requests")
        except BaseException:
            self.waiting -= 1
            self.gate.release()
            raise

        decoder = DecodeStream([], skip_special_tokens=True)
        rust_tokenizer: Any = self.tokenizer._tokenizer
        seen = 0
        text = ""  # everything decoded so far
        sent = 0  # how much of it has been yielded
        # Hold back the last len(longest stop) - 1 characters, as vLLM does, so a stop string that
        # arrives split over several tokens is never partly sent before it is recognised.
        hold = max((len(s) for s in params.stop), default=1) - 1
        stage = "waiting"
        cached = 0
        finished = False
        try:
            while True:
                output = await queue.get()
                if stage == "waiting":
                    stage = "running"
                    self.waiting -= 1
                    self.running += 1
                    cached = self.prefix_cache.started(request_id)
                if output.error is not None:
                    finished = True
                    raise RuntimeError(f"generation failed: {output.error}")
                tokens = output.generated_tokens
                searched_to = len(text)
                for token_id in tokens[seen:]:
                    text += decoder.step(rust_tokenizer, token_id) or ""
                seen = len(tokens)
                if params.stop:
                    start = max(0, searched_to - hold)
                    hits = [(i, stop) for stop in params.stop if (i := text.find(stop, start)) >= 0]
                    if hits:
                        finished = True
                        self._cb.cancel_request(request_id)
                        at, matched = min(hits)
                        yield Step(
                            text=text[sent:at],
                            completion_tokens=seen,
                            finish_reason="stop",
                            stop_sequence=matched,
                            cached_tokens=cached,
                        )
                        return
                if output.is_finished():
                    finished = True
                    ended = not params.ignore_eos and tokens and tokens[-1] in self.eos_token_ids
                    reason = "stop" if ended else "length"
                    yield Step(
                        text=text[sent:], completion_tokens=seen, finish_reason=reason, cached_tokens=cached
                    )
                    return
                safe = len(text) - hold
                if safe > sent:
                    piece, sent = text[sent:safe], safe
                    yield Step(text=piece, completion_tokens=seen, cached_tokens=cached)
        finally:
            if stage == "waiting":
                self.waiting -= 1
            else:
                self.running -= 1
            if not finished:
                # The consumer went away (client disconnect) or failed: stop spending compute on it.
                self._cb.cancel_request(request_id)
            self._forget(request_id)
            self.gate.release()

    def _forget(self, request_id: str) -> None:
        self.prefix_cache.forget(request_id)
        router = self._cb.output_router
        with router._lock:
            router.result_handlers.pop(request_id, None)

    def stop(self) -> None:
        self._cb.stop(block=True, timeout=2)


class EmbeddingBackend:
    """Mean-pooled, L2-normalised sentence embeddings with plain transformers.

    This is exactly what sentence-transformers computes for all-MiniLM-L6-v2 (the two gave
    bit-identical vectors, docs/decisions/0001-cpu-engine.md), without importing
    sentence-transformers and scikit-learn at start-up.
    Requests queue on the event loop; one worker packs whatever is waiting (up to
    ``EMBED_BATCH`` texts) into a single forward pass in a thread.
    """

    def __init__(self, model_path: Path, *, max_model_len: int | None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.model_path = model_path
        pooling = model_path / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
            raise RuntimeError(f"{model_path}: only mean pooling is implemented")
        st_config = model_path / "sentence_bert_config.json"
        seq_len = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModel.from_pretrained(model_path, dtype=torch.float32).eval()
        self.max_model_len = int(max_model_len or seq_len or self.model.config.max_position_embeddings)
        self.dimensions = int(self.model.config.hidden_size)
        self._pending: deque[tuple[list[str], asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None
        self.waiting = 0  # requests queued
        self.running = 0  # requests in the forward pass now

    def is_alive(self) -> bool:
        return True

    def kv_cache_usage(self) -> float:
        return 0.0

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        for i, n in enumerate(lengths):
            if n > self.max_model_len:
                raise InputError(
                    f"input[{i}] has {n} tokens; this model's maximum context length is {self.max_model_len}",
                    "input",
                )
        return lengths

    async def embed(self, texts: list[str]):
        """A float32 array (len(texts), dims). Requests that arrive together share forward passes."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        self.waiting += 1
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            taken = [self._pending.popleft()]
            size = len(taken[0][0])
            while self._pending and size + len(self._pending[0][0]) <= EMBED_BATCH:
                size += len(self._pending[0][0])
                taken.append(self._pending.popleft())
            self.waiting -= len(taken)
            self.running += len(taken)
            try:
                vectors = await asyncio.to_thread(self._forward, [t for texts, _ in taken for t in texts])
            except Exception as exc:
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
            else:
                start = 0
                for texts, future in taken:
                    if not future.done():  # a client that left has cancelled its future
                        future.set_result(vectors[start : start + len(texts)])
                    start += len(texts)
            finally:
                self.running -= len(taken)

    def _forward(self, texts: list[str]):
        torch = self._torch
        out = []
        for i in range(0, len(texts), EMBED_BATCH):
            batch = self.tokenizer(
                texts[i : i + EMBED_BATCH],
                padding=True,
                truncation=True,
                max_length=self.max_model_len,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(out).numpy()

    def stop(self) -> None:
        return None
