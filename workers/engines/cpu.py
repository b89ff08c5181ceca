"""The CPU engine launcher: the command a node agent without GPUs runs for one worker.

Decision. The issue preferred fronting ``transformers serve`` (transformers 5.23.0) with an
adapter and closing its gaps. We run a compact server of our own instead,
``workers.engines.cpu_server``, over the same maintained batching core that
``transformers serve --continuous-batching`` uses (``model.init_continuous_batching``). Checked
here, on the 2-core, 24 GiB dev box with torch 2.13.0+cpu and the tiny model:

* ``transformers serve --continuous-batching`` ignores ``temperature``: replies at temperature 0,
  1.0 and 1.5 were the same greedy text, whichever request came first (its batching loop takes
  ``do_sample`` from the model's generation config and passes no per-request values). An adapter
  cannot repair that from outside. ``cpu_sampling`` samples per request.
* ``stream_options.continuous_usage_stats`` needs the token count at every chunk; an adapter sees
  only text and would have to re-tokenise it. The backend counts generated tokens.
* vLLM's gauges (running, waiting, KV-cache use) need the scheduler's state, which an adapter
  cannot see; here they come from the batching loop and its paged cache.
* Memory: ``transformers serve`` sizes its KV cache from free RAM and peaked at 5.0 to 8.3 GB RSS
  for a 16 MB model (8 runs). We size it in tokens (``--kv-cache-tokens``, 32,768 by default):
  835 to 839 MB peak (8 runs), so several engines fit on a dev machine next to the tests.
* One process instead of an adapter in front of an internal server, and one module
  (``cpu_server``) where every difference from vLLM is decided.

Throughput, from ``bench/cpu_engine.py``: chat, ``max_tokens=128``, ``temperature=1.0``, after
a warm-up. Each figure is the best of 18 runs (3 rounds of 6, the two servers alternating).
The box was shared with other jobs (load average 3.5 on 2 cores), so single runs ranged from
about 30 tok/s to the best figure, and the medians were about 130 (ours) and 400
(``transformers serve``) tok/s at 4 concurrent:

==============================================  ===========  ============  ===============
server                                          1 request    4 concurrent  peak RSS
==============================================  ===========  ============  ===============
``workers.engines.cpu_server`` (this)           259 tok/s    677 tok/s     839 MB
``transformers serve --continuous-batching``    349 tok/s    801 tok/s     5.0 to 8.3 GB
==============================================  ===========  ============  ===============

``transformers serve`` runs a plain argmax here (see the first point), while we sample. With the
stock per-request warpers of transformers, which sort the vocabulary every step, ours reached
only 339 to 395 tok/s (best of 3 to 5) at 4 concurrent in the same kind of runs;
``cpu_sampling`` closed most of that gap. The tiny model makes these framework-overhead
figures, not compute figures.

Embeddings run in the same server (``--task embedding``, 477 MB RSS with all-MiniLM-L6-v2) over
plain transformers with mean pooling and L2 normalisation, which is what sentence-transformers
computes for that model. ``transformers serve`` has no ``/v1/embeddings``. The maintained
``infinity-emb`` 0.0.78 (``infinity_emb v2``) did serve the bundled folder offline here, in a
separate venv, but it pins ``transformers`` 4.57.6, ``sentence-transformers<4`` and
``huggingface_hub`` 0.36, so it cannot share an environment with the ``transformers`` 5 that the
chat engine needs, and it has no vLLM metric names or ``/v1`` prefix by default. fastembed was
not tried: it runs ONNX models, and the wheel ships only safetensors.
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
