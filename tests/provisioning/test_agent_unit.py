"""Node agent pieces that need no process: the engine environment, the log tail."""

import pytest

from provisioning.agent import engine_environment, log_tail


def test_engines_do_not_inherit_control_plane_secrets():
    env = engine_environment(
        {
            "PATH": "/bin",
            "HF_HOME": "/cache",
            "DATABASE_URL": "postgresql://x",
            "SECRET_KEY_FILE": "/run/secret",
            "STRIPE_SECRET_KEY": "sk",
            "BERTH_KEY_PEPPERS": "a:b",
        }
    )
    assert env == {"PATH": "/bin", "HF_HOME": "/cache"}


def test_engines_get_an_allow_list_not_everything_but_known_secrets():
    env = engine_environment(
        {
            "PATH": "/bin",
            "LANG": "C.UTF-8",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_CACHE": "/cache/t",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "NVIDIA_VISIBLE_DEVICES": "all",
            "VLLM_HOST_IP": "10.0.0.5",
            "OMP_NUM_THREADS": "4",
            "VLLM_API_KEY": "the agent's, not the worker's",
            "BERTH_INTERNAL_TOKEN": "t",
            "REDIS_URL": "redis://x",
            "AWS_SECRET_ACCESS_KEY": "a",
            "GITHUB_TOKEN": "g",
            "ANY_NEW_SECRET": "n",
        }
    )
    assert set(env) == {
        "PATH",
        "LANG",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_CACHE",
        "CUDA_DEVICE_ORDER",
        "NVIDIA_VISIBLE_DEVICES",
        "VLLM_HOST_IP",
        "OMP_NUM_THREADS",
    }


def test_log_tail_reads_only_the_end(tmp_path):
    path = tmp_path / "engine.log"
    path.write_text("".join(f"{i}\n" for i in range(1000)))
    assert log_tail(path, lines=3) == "997\n998\n999"
    assert log_tail(tmp_path / "missing.log") == ""


@pytest.mark.django_db
def test_the_engine_spec_comes_from_the_worker_and_its_model():
    from models_registry.constants import Engine
    from provisioning.agent import engine_spec
    from provisioning.models import Worker
    from tests.registry.factories import DeploymentFactory, ModelFactory

    model = ModelFactory(
        name="llama-3.1-8b-instruct",
        source="meta-llama/Llama-3.1-8B-Instruct",
        source_kind="hf",
        revision="abc123",
        tensor_parallel_size=2,
        context_length=8192,
        dtype="bfloat16",
        engine_args=["--max-num-seqs", "64"],
    )
    worker = Worker.objects.create(
        deployment=DeploymentFactory(
            model=model, engine=Engine.VLLM, max_loras=4, max_cpu_loras=32, max_lora_rank=64
        ),
        api_key="k",
        gpu_indices=[2, 3],
    )
    spec = engine_spec(worker, host="10.0.0.5", port=8123)
    assert (spec.engine, spec.served_name, spec.source, spec.revision) == (
        "vllm",
        "llama-3.1-8b-instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        "abc123",
    )
    assert (spec.host, spec.port, spec.api_key, spec.gpu_indices) == ("10.0.0.5", 8123, "k", (2, 3))
    assert (spec.tensor_parallel_size, spec.max_model_len, spec.dtype) == (2, 8192, "bfloat16")
    assert spec.extra_args == ("--max-num-seqs", "64")
    # LoRA: the deployment's limits; adapters themselves are loaded at run time, never at start.
    assert (spec.max_loras, spec.max_cpu_loras, spec.max_lora_rank) == (4, 32, 64)


@pytest.mark.django_db
def test_a_deployment_without_lora_sets_no_lora_limits():
    from provisioning.agent import engine_spec
    from provisioning.models import Worker
    from tests.registry.factories import DeploymentFactory

    worker = Worker.objects.create(deployment=DeploymentFactory(max_cpu_loras=8), api_key="k")
    spec = engine_spec(worker, host="127.0.0.1", port=8000)
    assert (spec.max_loras, spec.max_cpu_loras, spec.max_lora_rank) == (0, None, None)
