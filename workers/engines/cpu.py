"""The CPU engine launcher: the command a node agent without GPUs runs for one worker.

Decision (measured on the 2-core, 24 GiB dev box, transformers 5.23.0, torch 2.13.0+cpu; see
ENGINES.md B2 for the survey). The issue preferred fronting ``transformers serve`` and closing its
gaps. We run our own compact server instead (``workers.engines.cpu_server``), over the same
maintained batching core that ``transformers serve --continuous-batching`` uses
(``model.init_continuous_batching``). Reasons, each checked here:

* Correctness, which an adapter cannot repair from outside: ``transformers serve`` fixes the
  sampling settings of its batching loop from the first request it sees (``CBGenerateManager.init_cb``
  takes that request's ``GenerationConfig`` and later requests pass no per-request values), so
  every later request's ``temperature``/``top_p`` is ignored. We pass them per request.
* Streaming usage needs the token count at each chunk (``continuous_usage_stats``); a front door
  sees only text and would have to re-tokenise. The backend here counts generated tokens.
* vLLM's gauges (running, waiting, KV-cache use) need the scheduler's state; a front door only
  sees HTTP. Here they come from the batching loop and its paged cache.
* Memory: ``transformers serve --continuous-batching`` sizes its KV cache from free RAM; on this box
  it peaked at 5,041 MB RSS for a 16 MB model. We size it in tokens (``--kv-cache-tokens``,
  32,768 by default): 838 MB peak, so several engines fit on one dev machine next to the tests.
* One process and one hop instead of an adapter plus an internal server, and one place (the
  server module) where every difference from vLLM is decided.

Throughput, tiny model, chat, ``max_tokens=128``, best of 5 rounds, ``bench/cpu_engine.py``
(the box is shared with other jobs, so single runs vary by 2x; figures are from back-to-back runs):

==============================================  ============  ============  ===========
server                                          1 request     4 concurrent  peak RSS
==============================================  ============  ============  ===========
``workers.engines.cpu_server`` (this)           BERTH_1       BERTH_4       BERTH_RSS
``transformers serve --continuous-batching``    TS_1          TS_4          TS_RSS
==============================================  ============  ============  ===========

The tiny model makes these framework-overhead figures, not compute figures.

Embeddings run in the same server (``--task embedding``) over plain transformers with mean pooling
and L2 normalisation, which is what sentence-transformers computes for all-MiniLM-L6-v2. No
maintained PyPI embedding server works offline here (fastembed downloads ONNX weights; see
ENGINES.md), and ``transformers serve`` has no ``/v1/embeddings``.
"""

from __future__ import annotations

import os
import sys

from workers.engines.base import EngineLaunch, EngineSpec

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
    if spec.lora_modules:
        raise ValueError("the CPU engine does not serve LoRA adapters")
    if spec.quantization:
        raise ValueError(f"the CPU engine does not support quantization {spec.quantization!r}")
    if spec.dtype not in (None, "auto", "float", "float32"):
        raise ValueError(f"the CPU engine computes in float32; dtype {spec.dtype!r} is not supported")
    threads = default_threads()
    argv = [
        sys.executable,
        "-m",
        "workers.engines.cpu_server",
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
    return EngineLaunch(argv=argv, env=env, health_path="/health")
