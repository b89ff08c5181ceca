"""Berth's CPU engine: vLLM's OpenAI-compatible server over transformers, for hosts without a GPU.

Run as ``python -m cpu_engine --task chat --model DIR --served-model-name NAME --host H --port P``
(or ``--fd N``: serve on a bound socket inherited from the node agent) with the API key in
``VLLM_API_KEY`` (the variable ``vllm serve`` reads, and unlike argv it does not show in ``ps``).
``provisioning.engines.cpu.build_launch`` writes that command. The process imports no Django, so it is
ready as soon as the model is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

API_KEY_ENV = "VLLM_API_KEY"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cpu_engine", description=(__doc__ or "").split("\n")[0])
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
    parser.add_argument(
        "--max-loras", type=int, default=0, help="LoRA adapters run at once; 0: no adapters (vLLM's flag)"
    )
    parser.add_argument(
        "--max-cpu-loras", type=int, default=None, help="LoRA adapters kept loaded (default: --max-loras)"
    )
    parser.add_argument("--max-lora-rank", type=int, default=16, help="the largest adapter rank taken")
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
        sys.exit(f"cpu_engine: no model folder at {model_path} (config.json missing)")

    from cpu_engine.app import create_app
    from cpu_engine.backends import EmbeddingBackend, GenerationBackend

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
    if args.max_loras > 0:
        if args.task == "embedding":
            sys.exit("cpu_engine: LoRA adapters are served for chat and completion models only")
        from cpu_engine import lora

        manager = lora.LoraManager(
            backend,
            served_name=args.served_model_name,
            max_loras=args.max_loras,
            max_cpu_loras=args.max_cpu_loras,
            max_lora_rank=args.max_lora_rank,
        )
        lora.install(app, manager)
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
        app.state.engine.stop()


if __name__ == "__main__":
    main()
