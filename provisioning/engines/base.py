"""What a launcher gets (EngineSpec) and what it returns (EngineLaunch).

The provisioner fills an EngineSpec from a Deployment/Model/Worker; a node agent runs the
EngineLaunch. Every engine, whatever its kind, must then behave like ``vllm serve``:

* listen on ``host:port`` (or serve on the inherited socket ``listen_fd`` when the launcher
  takes it); require ``Authorization: Bearer <api_key>`` on ``/v1/...``;
* serve the model under ``served_name`` at ``/v1/chat/completions``, ``/v1/completions``
  (streaming and not, ``usage`` included, ``stream_options.include_usage`` honoured, streams
  ending with ``data: [DONE]``), ``/v1/embeddings`` for embedding models, ``/v1/models``;
* never share prefix-cache blocks between requests whose ``cache_salt`` differs (the gateway
  sets one per tenant), and answer failures with generic OpenAI-shaped errors, not exception text;
* answer ``GET /health`` with 200 once ready, and Prometheus ``GET /metrics`` with vLLM's metric
  names (``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``,
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``, and for generation
  ``vllm:prefix_cache_queries_total``/``vllm:prefix_cache_hits_total``, labelled ``model_name``);
* with ``max_loras`` > 0: take ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
  ``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` behind the same key, serve a loaded adapter
  as ``model=<lora_name>``, list it in ``/v1/models`` with ``parent`` = the base, keep at most
  ``max_cpu_loras`` loaded (evicting the least recently used), and export
  ``vllm:lora_requests_info``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # "vllm" | "cpu"
    served_name: str  # the public model name clients send as "model"
    source: str  # local folder, or a Hugging Face repo id
    task: str  # "chat" | "completion" | "embedding"
    host: str
    port: int
    api_key: str  # generated per worker; only the gateway and control plane know it
    # A socket already bound to host:port, open in the agent; a launcher that can serve on it
    # names it in EngineLaunch.pass_fds and the engine inherits it (no window for another process
    # to take the port). None, or not passed on: the engine binds host:port itself.
    listen_fd: int | None = None
    gpu_indices: tuple[int, ...] = ()  # empty on CPU slots
    revision: str | None = None
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    dtype: str | None = None
    quantization: str | None = None
    gpu_memory_utilization: float | None = None
    enable_prefix_caching: bool | None = None  # None: the engine's default
    # LoRA: adapters are loaded at run time (POST /v1/load_lora_adapter, by the gateway), never
    # named at start. max_loras > 0 turns it on: adapters in one batch; max_cpu_loras: adapters
    # kept loaded (None: the engine's default, max_loras); max_lora_rank: the largest rank taken.
    max_loras: int = 0
    max_cpu_loras: int | None = None
    max_lora_rank: int | None = None
    download_dir: str | None = None
    tool_call_parser: str | None = None  # vLLM: --enable-auto-tool-choice --tool-call-parser X
    reasoning_parser: str | None = None  # vLLM: --reasoning-parser X
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineLaunch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the agent's environment
    health_path: str = "/health"
    pass_fds: tuple[int, ...] = ()  # descriptors the engine inherits (spec.listen_fd, if it takes it)
