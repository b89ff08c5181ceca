"""The CPU engine launcher: the command a node agent without GPUs runs for one worker.

The engine itself is the top-level package ``cpu_engine`` (``python -m cpu_engine``); why Berth
runs its own server rather than ``transformers serve``, with measurements, is in
docs/decisions/0001-cpu-engine.md.
"""

from __future__ import annotations

import os
import sys

from provisioning.engines.base import EngineLaunch, EngineSpec

TASKS = ("chat", "completion", "embedding")

# Each engine takes at most this many cores unless extra_args say otherwise: torch's default of
# "all cores" makes two engines on one host fight over every core.
MAX_THREADS = 4


def default_threads() -> int:
    return max(1, min(MAX_THREADS, os.cpu_count() or 1))


def build_launch(spec: EngineSpec) -> EngineLaunch:
    if spec.engine != "cpu":
        raise ValueError(f"not a CPU engine spec: engine={spec.engine!r}")
    if spec.task not in TASKS:
        raise ValueError(f"unknown task {spec.task!r}; expected one of {', '.join(TASKS)}")
    if spec.gpu_indices:
        raise ValueError("the CPU engine takes no GPUs")
    if spec.max_loras < 0 or (spec.max_cpu_loras is not None and spec.max_cpu_loras < spec.max_loras):
        raise ValueError("max_loras must be >= 0 and max_cpu_loras >= max_loras")
    if spec.quantization:
        raise ValueError(f"the CPU engine does not support quantization {spec.quantization!r}")
    if spec.dtype not in (None, "auto", "float", "float32"):
        raise ValueError(f"the CPU engine computes in float32; dtype {spec.dtype!r} is not supported")
    threads = default_threads()
    argv = [
        sys.executable,
        "-m",
        "cpu_engine",
        "--task",
        spec.task,
        "--model",
        spec.source,
        "--served-model-name",
        spec.served_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--threads",
        str(threads),
    ]
    if spec.max_model_len:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_loras > 0:
        # The same flags as vLLM; adapters arrive at run time through /v1/load_lora_adapter.
        argv += ["--max-loras", str(spec.max_loras), "--max-lora-rank", str(spec.max_lora_rank or 16)]
        if spec.max_cpu_loras is not None:
            argv += ["--max-cpu-loras", str(spec.max_cpu_loras)]
    pass_fds: tuple[int, ...] = ()
    if spec.listen_fd is not None:
        # Serve on the agent's socket: the port is never free between choosing it and serving.
        argv += ["--fd", str(spec.listen_fd)]
        pass_fds = (spec.listen_fd,)
    argv += list(spec.extra_args)
    env = {
        # The key travels in the environment, as vLLM reads it, so it never shows in `ps`.
        "VLLM_API_KEY": spec.api_key,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    return EngineLaunch(argv=argv, env=env, health_path="/health", pass_fds=pass_fds)
