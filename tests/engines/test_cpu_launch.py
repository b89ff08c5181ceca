"""The CPU launcher's command line: what a node agent will run, as ``python -m cpu_engine`` reads it."""

from __future__ import annotations

import sys

import pytest

from cpu_engine.__main__ import parse_args
from provisioning.engines import EngineSpec, build_launch
from provisioning.engines.cpu import build_launch as build_cpu_launch


def spec(**overrides) -> EngineSpec:
    values = {
        "engine": "cpu",
        "served_name": "tiny",
        "source": "/models/tiny",
        "task": "chat",
        "host": "127.0.0.1",
        "port": 8123,
        "api_key": "k-123",
    }
    return EngineSpec(**{**values, **overrides})


@pytest.mark.parametrize("task", ["chat", "completion", "embedding"])
def test_it_runs_the_cpu_engine_package_with_the_spec(task):
    launch = build_launch(spec(task=task))
    assert launch.argv[:3] == [sys.executable, "-m", "cpu_engine"]
    args = parse_args(launch.argv[3:])
    assert (args.task, args.model, args.served_model_name, args.host, args.port) == (
        task,
        "/models/tiny",
        "tiny",
        "127.0.0.1",
        8123,
    )
    assert launch.health_path == "/health"


def test_it_passes_the_key_in_the_environment_not_argv():
    launch = build_launch(spec())
    assert launch.env["VLLM_API_KEY"] == "k-123"
    assert "k-123" not in " ".join(launch.argv)


def test_it_runs_offline_with_capped_threads():
    launch = build_launch(spec())
    assert launch.env["HF_HUB_OFFLINE"] == "1"
    threads = int(launch.env["OMP_NUM_THREADS"])
    assert 1 <= threads <= 4
    assert parse_args(launch.argv[3:]).threads == threads


def test_it_forwards_context_length_and_extra_args():
    launch = build_launch(spec(max_model_len=512, extra_args=("--kv-cache-tokens", "4096")))
    args = parse_args(launch.argv[3:])
    assert args.max_model_len == 512
    assert args.kv_cache_tokens == 4096


@pytest.mark.parametrize(
    "bad",
    [
        {"task": "rerank"},
        {"gpu_indices": (0,)},
        {"max_loras": 4, "max_cpu_loras": 2},
        {"quantization": "awq"},
        {"dtype": "float16"},
        {"engine": "vllm"},
    ],
)
def test_it_refuses_specs_it_cannot_serve(bad):
    with pytest.raises(ValueError):
        build_cpu_launch(spec(**bad))


def test_it_passes_the_lora_limits_as_vllm_flags():
    launch = build_cpu_launch(spec(max_loras=2, max_cpu_loras=8, max_lora_rank=32))
    args = parse_args(launch.argv[3:])
    assert (args.max_loras, args.max_cpu_loras, args.max_lora_rank) == (2, 8, 32)
    assert "--max-loras" not in build_cpu_launch(spec()).argv


def test_it_serves_on_the_agents_socket_when_given_one():
    launch = build_launch(spec(listen_fd=7))
    assert parse_args(launch.argv[3:]).fd == 7
    assert launch.pass_fds == (7,)
    plain = build_launch(spec())
    assert parse_args(plain.argv[3:]).fd is None and plain.pass_fds == ()


def test_the_vllm_launcher_binds_its_port_itself():
    launch = build_launch(spec(engine="vllm", source="org/model", listen_fd=7))
    assert "--fd" not in launch.argv and launch.pass_fds == ()
    assert launch.argv[launch.argv.index("--port") + 1] == "8123"
