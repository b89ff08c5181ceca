"""The vLLM launcher: an EngineSpec becomes the exact ``vllm serve`` command line of vLLM 0.33.0.

Flag spellings come from vLLM 0.33.0's own parser, recorded in ``vllm_0.33.0_serve_flags.json``
next to this file (see ``scripts/record_vllm_flags.py``); the tests check every flag emitted here
against that record, and against the real parser where ``vllm`` is importable.

Choices worth knowing:

* **The API key travels in ``VLLM_API_KEY``, never in argv.** argv is world-readable through
  ``ps`` and ``/proc/<pid>/cmdline``; vLLM reads the variable when ``--api-key`` is absent
  (``serve/middleware/register.py``), and a pod gets it from a Secret the same way.
* **No ``--enable-force-include-usage``.** The gateway asks every request for
  ``stream_options.include_usage`` itself and drops the usage chunk when the client did not ask
  for it. The server-wide flag also forces ``continuous_usage_stats``, which puts a ``usage`` key
  on *every* chunk, so the gateway would have to rewrite each chunk for clients that did not ask.
  Extra args may not turn it on either.
* **Always ``--enable-server-load-tracking``** (feeds ``GET /load`` for routing) and
  **``--disable-uvicorn-access-log``** (one line per request and per health probe is noise; the
  gateway records every request).
* **Always ``--scheduling-policy priority``**: every request the gateway sends carries vLLM's
  ``priority`` (``contract.tiers.RANK`` of its service tier: lower runs first, FCFS within one),
  and vLLM refuses a non-zero ``priority`` under its default ``fcfs`` policy. Extra args may not
  set the policy back.
* **Always ``--enable-prompt-tokens-details``**: usage then carries
  ``prompt_tokens_details.cached_tokens``, the prompt tokens served from the prefix cache, which
  the gateway meters and billing prices at the cached-input price.
* **GPUs are chosen with ``CUDA_VISIBLE_DEVICES``** (vLLM uses the first TP devices it sees). A
  Kubernetes pod leaves ``gpu_indices`` empty: the device plugin already exposes only its GPUs.
* **Booleans are only emitted when set**, as ``--enable-prefix-caching`` or
  ``--no-enable-prefix-caching``. vLLM 0.33 registers booleans with ``EnableDisableAction``, which
  shows ``--disable-prefix-caching`` in ``--help`` and still accepts the ``BooleanOptionalAction``
  spelling ``--no-enable-prefix-caching``. The latter is what vLLM's own ``--config`` file
  expansion emits, and earlier releases accept it too.
* **Prefix-cache isolation needs no flag.** vLLM reads ``cache_salt`` from each chat and
  completion request (validated by ``check_cache_salt_support`` in its OpenAI protocol models)
  and mixes it into the hash of the prompt's first block (``generate_block_hash_extra_keys`` in
  ``vllm/v1/core/kv_cache_utils.py``), so requests with different salts never share cached
  blocks; the gateway sets the salt per tenant. Prefix caching itself stays on by default.
* **The port is bound by vLLM itself** (``--host``/``--port``); the node agent publishes the
  worker's URL only once the listener on that port is this process tree's (``provisioning.probe``).
* **LoRA adapters load at run time through vLLM's own routes**, ``POST /v1/load_lora_adapter``
  and ``/v1/unload_lora_adapter`` (registered by ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), never
  ``--lora-modules`` at start and not the filesystem resolver. The gateway decides where an
  adapter goes (LoRA affinity, ``gateway.adapters``), so it must be able to place one on a chosen
  worker, see the load succeed or fail before the tenant's request goes there, and unload it when
  the adapter is deleted; the resolver loads whatever name a request carries from one cache
  folder per host, which would need every adapter copied to every node first, hides failures
  inside the request, and never unloads. The routes live under ``/v1``, so ``--api-key`` guards
  them: only holders of the worker key (the gateway, the control plane) can call them, and the
  gateway forwards tenants' requests to the inference paths only. vLLM's warning that runtime
  updating is "for local development" is about exactly that exposure, which the private key
  closes. ``--max-loras`` (adapters in one batch), ``--max-cpu-loras`` (adapters kept loaded; the
  engine evicts the least recently used) and ``--max-lora-rank`` come from the Deployment.
* **The executable** is ``BERTH_VLLM_BIN`` from the environment (default ``vllm``): the GPU
  worker's vLLM lives in its own environment (it pins torch 2.14 and CUDA), so the node agent
  points this at e.g. ``/opt/vllm/bin/vllm``. Pass ``vllm_bin=`` to override per call.
"""

from __future__ import annotations

import os

from models_registry.parsers import REASONING_PARSERS, TOOL_CALL_PARSERS
from provisioning.engines.base import EngineLaunch, EngineSpec

VLLM_VERSION = "0.33.0"
VLLM_BIN_ENV = "BERTH_VLLM_BIN"
DEFAULT_VLLM_BIN = "vllm"

# vLLM 0.33.0 `--max-lora-rank` choices.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16  # vLLM's own default, and the Deployment field's
# vLLM registers its runtime load/unload routes only when this is set (serve/lora/api_router.py).
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

# Every spelling (aliases and hidden negations included) of the vLLM options Berth decides, by the
# parser's dest. Extra args may not set any of them: a second source for these would silently
# override placement, auth, or the gateway's assumptions. The tests check this table against the
# recorded parser, so a spelling cannot be missed.
MANAGED_OPTIONS: dict[str, tuple[str, ...]] = {
    # addressing and auth: the control plane publishes host:port and holds the key
    "model": ("--model",),
    "served_model_name": ("--served-model-name",),
    "host": ("--host",),
    "port": ("--port",),
    "uds": ("--uds",),
    "api_key": ("--api-key",),
    "config": ("--config",),  # a YAML file could set any of these
    "grpc": ("--grpc",),
    "grpc_port": ("--grpc-port",),
    "ssl_keyfile": ("--ssl-keyfile",),  # the gateway and probes speak plain HTTP to workers
    "ssl_certfile": ("--ssl-certfile",),
    "ssl_ca_certs": ("--ssl-ca-certs",),
    "ssl_cert_reqs": ("--ssl-cert-reqs",),
    # placement: a replica gets exactly tensor_parallel_size GPUs on one node
    "tensor_parallel_size": ("--tensor-parallel-size", "-tp"),
    "pipeline_parallel_size": ("--pipeline-parallel-size", "-pp"),
    "data_parallel_size": ("--data-parallel-size", "-dp"),
    "data_parallel_size_local": ("--data-parallel-size-local", "-dpl"),
    "device_ids": ("--device-ids",),
    "headless": ("--headless",),
    "nnodes": ("--nnodes", "-n"),
    "node_rank": ("--node-rank", "-r"),
    # model settings that live in EngineSpec fields
    "gpu_memory_utilization": ("--gpu-memory-utilization", "--device-memory-utilization"),
    "max_model_len": ("--max-model-len",),
    "dtype": ("--dtype",),
    "quantization": ("--quantization", "-q"),
    "revision": ("--revision",),
    "runner": ("--runner",),
    "download_dir": ("--download-dir",),
    "enable_prefix_caching": (
        "--enable-prefix-caching",
        "--disable-prefix-caching",
        "--no-enable-prefix-caching",
    ),
    "enable_lora": ("--enable-lora", "--disable-lora", "--no-enable-lora"),
    "max_loras": ("--max-loras",),
    "max_lora_rank": ("--max-lora-rank",),
    "max_cpu_loras": ("--max-cpu-loras",),
    # adapters are loaded at run time by the gateway, never named at start
    "lora_modules": ("--lora-modules",),
    # tool calling and reasoning: the registry's Model.tool_call_parser / reasoning_parser
    "enable_auto_tool_choice": (
        "--enable-auto-tool-choice",
        "--disable-auto-tool-choice",
        "--no-enable-auto-tool-choice",
    ),
    "tool_call_parser": ("--tool-call-parser",),
    "reasoning_parser": ("--reasoning-parser",),
    # serving behaviour the gateway relies on
    "enable_force_include_usage": (
        "--enable-force-include-usage",
        "--disable-force-include-usage",
        "--no-enable-force-include-usage",
    ),
    "enable_server_load_tracking": (
        "--enable-server-load-tracking",
        "--disable-server-load-tracking",
        "--no-enable-server-load-tracking",
    ),
    "enable_prompt_tokens_details": (
        "--enable-prompt-tokens-details",
        "--disable-prompt-tokens-details",
        "--no-enable-prompt-tokens-details",
    ),
    "scheduling_policy": ("--scheduling-policy",),
    "disable_uvicorn_access_log": (
        "--disable-uvicorn-access-log",
        "--enable-uvicorn-access-log",
        "--no-disable-uvicorn-access-log",
    ),
}
MANAGED_FLAGS: frozenset[str] = frozenset(f for spellings in MANAGED_OPTIONS.values() for f in spellings)


class EngineArgsError(ValueError):
    """An EngineSpec that cannot become a valid, Berth-compatible ``vllm serve`` command."""


def default_vllm_bin() -> str:
    return os.environ.get(VLLM_BIN_ENV) or DEFAULT_VLLM_BIN


def is_local_source(source: str) -> bool:
    """A filesystem path (on the worker host or in the pod), as opposed to a Hugging Face repo id."""
    return os.path.isabs(source) or source.startswith(("./", "../", "~"))


def build_launch(spec: EngineSpec, *, vllm_bin: str | None = None) -> EngineLaunch:
    """The exact ``vllm serve`` argv and environment for one worker."""
    if not spec.api_key:
        raise EngineArgsError("api_key is required: a worker must never serve without one")
    argv = [vllm_bin or default_vllm_bin(), "serve", *serve_args(spec)]
    return EngineLaunch(argv=argv, env=serve_env(spec), health_path="/health")


def serve_args(spec: EngineSpec) -> list[str]:
    """Everything after ``vllm serve``, validated; the Kubernetes backend's container args.

    The API key is never part of these (see ``serve_env``), so a spec without one is fine here.
    """
    _validate(spec)
    # The model goes first: --served-model-name takes one or more values and would swallow a
    # positional that followed it.
    args = [spec.source, "--served-model-name", spec.served_name]
    args += ["--host", spec.host, "--port", str(spec.port)]
    args += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.task == "embedding":
        # Embedding checkpoints load as pooling models; a generative checkpoint used for
        # embeddings also needs `--convert embed`, which extra args may add.
        args += ["--runner", "pooling"]
    if spec.revision:
        args += ["--revision", spec.revision]
    if spec.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}"]
    if spec.max_model_len is not None:
        args += ["--max-model-len", str(spec.max_model_len)]
    if spec.dtype:
        args += ["--dtype", spec.dtype]
    if spec.quantization:
        args += ["--quantization", spec.quantization]
    if spec.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching")
    if spec.max_loras > 0:
        args += ["--enable-lora", "--max-loras", str(spec.max_loras)]
        args += ["--max-lora-rank", str(spec.max_lora_rank or DEFAULT_MAX_LORA_RANK)]
        if spec.max_cpu_loras is not None:
            args += ["--max-cpu-loras", str(spec.max_cpu_loras)]
    if spec.tool_call_parser:
        # `tool_choice: "auto"` (the default with `tools`) needs both; without them vLLM answers
        # a clear 400 and still serves named or "required" tool choice through structured output.
        args += ["--enable-auto-tool-choice", "--tool-call-parser", spec.tool_call_parser]
    if spec.reasoning_parser:
        args += ["--reasoning-parser", spec.reasoning_parser]
    if spec.download_dir:
        args += ["--download-dir", spec.download_dir]
    args += [
        "--scheduling-policy",
        "priority",
        "--enable-server-load-tracking",
        "--enable-prompt-tokens-details",
        "--disable-uvicorn-access-log",
    ]
    args += list(spec.extra_args)
    return args


def serve_env(spec: EngineSpec, *, include_api_key: bool = True) -> dict[str, str]:
    """Environment added to the agent's; Kubernetes takes the key from a Secret instead."""
    env: dict[str, str] = {}
    if include_api_key:
        env["VLLM_API_KEY"] = spec.api_key
    if spec.gpu_indices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_indices)
    if spec.max_loras > 0:
        # Registers POST /v1/load_lora_adapter and /v1/unload_lora_adapter (see the module docstring).
        env[RUNTIME_LORA_ENV] = "True"
    if is_local_source(spec.source):
        # Everything is in the folder: any Hub lookup should fail at once rather than reach out
        # (or wait on a network the GPU host may not have).
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _validate(spec: EngineSpec) -> None:
    if spec.engine != "vllm":
        raise EngineArgsError(f"the vLLM launcher got an engine={spec.engine!r} spec")
    if not spec.source:
        raise EngineArgsError("source (a local folder or a Hugging Face repo id) is required")
    if not spec.served_name:
        raise EngineArgsError("served_name is required")
    if not 1 <= spec.port <= 65535:
        raise EngineArgsError(f"port {spec.port} is out of range")
    if spec.tensor_parallel_size < 1:
        raise EngineArgsError("tensor_parallel_size must be at least 1")
    if spec.gpu_indices and len(spec.gpu_indices) != spec.tensor_parallel_size:
        raise EngineArgsError(
            f"tensor_parallel_size={spec.tensor_parallel_size} needs exactly that many GPUs, "
            f"got gpu_indices={list(spec.gpu_indices)}"
        )
    if len(set(spec.gpu_indices)) != len(spec.gpu_indices):
        raise EngineArgsError(f"gpu_indices repeat a GPU: {list(spec.gpu_indices)}")
    if spec.gpu_memory_utilization is not None and not 0 < spec.gpu_memory_utilization <= 1:
        raise EngineArgsError("gpu_memory_utilization is a fraction in (0, 1]")
    if spec.max_model_len is not None and spec.max_model_len < 1:
        raise EngineArgsError("max_model_len must be positive")
    if spec.dtype and spec.dtype not in DTYPES:
        raise EngineArgsError(f"dtype {spec.dtype!r} is not one of {', '.join(DTYPES)}")
    if spec.tool_call_parser and spec.tool_call_parser not in TOOL_CALL_PARSERS:
        raise EngineArgsError(f"tool_call_parser {spec.tool_call_parser!r} is not one of vLLM's parsers")
    if spec.reasoning_parser and spec.reasoning_parser not in REASONING_PARSERS:
        raise EngineArgsError(f"reasoning_parser {spec.reasoning_parser!r} is not one of vLLM's parsers")
    _validate_lora(spec)
    _validate_extra_args(spec.extra_args)


def _validate_lora(spec: EngineSpec) -> None:
    if spec.max_loras < 0:
        raise EngineArgsError("max_loras must not be negative (0 turns LoRA off)")
    if spec.max_loras == 0:
        if spec.max_cpu_loras is not None or spec.max_lora_rank is not None:
            raise EngineArgsError("max_cpu_loras/max_lora_rank apply only with max_loras > 0")
        return
    if spec.max_cpu_loras is not None and spec.max_cpu_loras < spec.max_loras:
        # vLLM refuses this at start ("max_cpu_loras must be >= max_loras").
        raise EngineArgsError(
            f"max_cpu_loras ({spec.max_cpu_loras}) must be at least max_loras ({spec.max_loras})"
        )
    if spec.max_lora_rank is not None and spec.max_lora_rank not in MAX_LORA_RANKS:
        raise EngineArgsError(
            f"max_lora_rank {spec.max_lora_rank} is not one of {', '.join(map(str, MAX_LORA_RANKS))}"
        )


def _option_key(arg: str) -> str:
    """``--foo_bar.x=1`` -> ``--foo-bar``: vLLM accepts underscores and dotted sub-keys."""
    key = arg.split("=", 1)[0]
    if key.startswith("--"):
        key = "--" + key[2:].split(".", 1)[0].replace("_", "-")
    return key


def _validate_extra_args(extra_args: tuple[str, ...]) -> None:
    for arg in extra_args:
        if not arg.startswith("-") or arg in ("-", "--") or _is_number(arg):
            continue  # a value, e.g. the "-1" in `--seed -1`
        key = _option_key(arg)
        # argparse also accepts any unambiguous prefix (`--po` for `--port`), so those count too.
        clash = sorted(f for f in MANAGED_FLAGS if f == key or f.startswith(key) and f[1] == key[1])
        if clash:
            raise EngineArgsError(
                f"extra argument {arg!r} would override {clash[0]}, which Berth sets from the "
                "deployment; change the deployment's field instead"
            )


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True
