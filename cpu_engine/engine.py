"""The engine object: one per process, shared by every route through ``app.state.engine``.

It holds what a request needs besides its own body: the task served, the model backend (model,
tokenizer, batching loop and prefix cache live there), the public model name and the metrics. The
request rules that depend on the served model, and not on HTTP, are its methods, so the routes in
``cpu_engine.routes`` only translate between the wire and these.
"""

from __future__ import annotations

import time
from typing import Any

from cpu_engine.backends import SamplingParams
from cpu_engine.errors import InputError
from cpu_engine.metrics import Metrics
from cpu_engine.schemas import SamplingRequest

TASKS = ("chat", "completion", "embedding")


class Engine:
    def __init__(self, *, task: str, backend: Any, served_name: str):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        self.task = task
        # A GenerationBackend or an EmbeddingBackend (cpu_engine.backends); tests put fakes here.
        self.backend = backend
        self.served_name = served_name
        self.metrics = Metrics(served_name, backend)
        self.created = int(time.time())
        self.lora: Any = None  # a cpu_engine.lora.LoraManager when the engine serves adapters

    def check_model(self, model: Any) -> None:
        """A request may leave ``model`` out; if it names one, it must be the served one or a
        loaded LoRA adapter."""
        if model is not None and model != self.served_name and not (self.lora and self.lora.has(model)):
            raise InputError(
                f"The model `{model}` does not exist.", "model", status=404, code="model_not_found"
            )

    def sampling_params(
        self, body: SamplingRequest, prompt_len: int, requested_max: int | None
    ) -> SamplingParams:
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
            max_tokens=self.backend.resolve_max_tokens(prompt_len, requested_max),
            temperature=temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=top_k,
            stop=tuple(s for s in stop if s),
            ignore_eos=body.ignore_eos,
            priority=body.priority,
        )

    def steps(self, model: str | None, prompt_ids: list[int], params: SamplingParams, cache_salt: str | None):
        """The generation steps of a request, through the adapter it names if it names one."""
        if self.lora is not None and model not in (None, self.served_name):
            return self.lora.generate(model, prompt_ids, params)
        return self.backend.generate(prompt_ids, params, cache_salt=cache_salt)

    def stop(self) -> None:
        if self.lora is not None:
            self.lora.stop()
        self.backend.stop()
