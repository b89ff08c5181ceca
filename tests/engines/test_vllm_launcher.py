"""The vLLM launcher: exact `vllm serve` argv and env, checked against vLLM 0.33.0's own parser.

Flags are checked against the recorded parser dump (``provisioning/engines/vllm_0.33.0_serve_flags.json``)
always, and against the live parser when ``vllm`` is importable (a GPU worker's environment).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import provisioning.engines
from provisioning.engines.base import EngineSpec
from provisioning.engines.vllm import (
    MANAGED_FLAGS,
    MANAGED_OPTIONS,
    EngineArgsError,
    build_launch,
    serve_args,
)

RECORD = json.loads((Path(provisioning.engines.__file__).parent / "vllm_0.33.0_serve_flags.json").read_text())
FLAGS: dict[str, dict] = RECORD["flags"]


def make_spec(**overrides) -> EngineSpec:
    fields = {
        "engine": "vllm",
        "served_name": "llama-3-8b",
        "source": "meta-llama/Llama-3.1-8B-Instruct",
        "task": "chat",
        "host": "10.8.0.12",
        "port": 8101,
        "api_key": "wk-secret-123",
        "gpu_indices": (2, 3),
        "tensor_parallel_size": 2,
    }
    fields.update(overrides)
    return EngineSpec(**fields)


def full_spec(**overrides) -> EngineSpec:
    """A spec that makes the launcher emit every flag it can."""
    fields = {
        "task": "embedding",
        "revision": "0e9e39f",
        "max_model_len": 8192,
        "dtype": "bfloat16",
        "quantization": "fp8",
        "gpu_memory_utilization": 0.85,
        "enable_prefix_caching": False,
        "max_loras": 2,
        "max_cpu_loras": 8,
        "max_lora_rank": 64,
        "download_dir": "/models",
        "tool_call_parser": "hermes",
        "reasoning_parser": "qwen3",
        "extra_args": ("--max-num-seqs", "64", "--seed=7"),
    }
    fields.update(overrides)
    return make_spec(**fields)


def parse_with_record(args: list[str]) -> dict[str, object]:
    """Walk argv with the recorded arities and return dest -> value, like argparse would."""
    assert not args[0].startswith("-"), "the model must come first"
    parsed: dict[str, object] = {"model_tag": args[0]}
    i = 1
    while i < len(args):
        flag, _, inline = args[i].partition("=")
        assert flag in FLAGS, f"{flag} is not a vLLM {RECORD['vllm_version']} serve flag"
        entry = FLAGS[flag]
        nargs = entry.get("nargs")
        i += 1
        if nargs == 0:
            parsed[entry["dest"]] = entry.get("sets", True)
        elif inline:
            parsed[entry["dest"]] = inline
        elif nargs == "+":
            values = []
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            assert values, f"{flag} needs at least one value"
            parsed[entry["dest"]] = values
        else:
            parsed[entry["dest"]] = args[i]
            if "choices" in entry:
                assert args[i] in entry["choices"], f"{args[i]} not a choice of {flag}"
            i += 1
    return parsed


def test_record_is_from_vllm_0_33_0():
    assert RECORD["vllm_version"] == "0.33.0"
    assert RECORD["positionals"] == ["model_tag"]


def test_it_builds_the_exact_command_line():
    launch = build_launch(make_spec(), vllm_bin="/opt/vllm/bin/vllm")

    assert launch.argv == [
        "/opt/vllm/bin/vllm",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name",
        "llama-3-8b",
        "--host",
        "10.8.0.12",
        "--port",
        "8101",
        "--tensor-parallel-size",
        "2",
        "--scheduling-policy",
        "priority",
        "--enable-server-load-tracking",
        "--enable-prompt-tokens-details",
        "--disable-uvicorn-access-log",
    ]
    assert launch.env == {"VLLM_API_KEY": "wk-secret-123", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert launch.health_path == "/health"


def test_it_is_reached_through_the_engine_dispatcher():
    assert provisioning.engines.build_launch(make_spec()).argv[1:3] == ["serve", make_spec().source]


def test_every_flag_it_can_emit_is_a_vllm_0_33_0_flag():
    args = serve_args(full_spec())

    parsed = parse_with_record(args)

    assert parsed == {
        "model_tag": "meta-llama/Llama-3.1-8B-Instruct",
        "served_model_name": ["llama-3-8b"],
        "host": "10.8.0.12",
        "port": "8101",
        "tensor_parallel_size": "2",
        "runner": "pooling",
        "revision": "0e9e39f",
        "gpu_memory_utilization": "0.85",
        "max_model_len": "8192",
        "dtype": "bfloat16",
        "quantization": "fp8",
        "enable_prefix_caching": False,
        "enable_lora": True,
        "max_loras": "2",
        "max_lora_rank": "64",
        "max_cpu_loras": "8",
        "download_dir": "/models",
        "enable_auto_tool_choice": True,
        "tool_call_parser": "hermes",
        "reasoning_parser": "qwen3",
        "scheduling_policy": "priority",
        "enable_server_load_tracking": True,
        "enable_prompt_tokens_details": True,
        "disable_uvicorn_access_log": True,
        "max_num_seqs": "64",
        "seed": "7",
    }


@pytest.mark.parametrize(
    ("setting", "flag", "recorded_value"),
    [(True, "--enable-prefix-caching", True), (False, "--no-enable-prefix-caching", False)],
)
def test_booleans_use_the_boolean_optional_action_spellings(setting, flag, recorded_value):
    args = serve_args(make_spec(enable_prefix_caching=setting))

    assert flag in args
    assert FLAGS[flag]["dest"] == "enable_prefix_caching"
    assert FLAGS[flag]["nargs"] == 0
    assert FLAGS[flag]["sets"] is recorded_value


def test_it_leaves_prefix_caching_to_vllm_when_unset():
    args = serve_args(make_spec(enable_prefix_caching=None))

    assert not [a for a in args if "prefix-caching" in a]


def test_it_never_forces_usage_on_every_chunk():
    assert not [a for a in serve_args(full_spec()) if "force-include-usage" in a]


def test_it_keeps_the_api_key_out_of_argv():
    launch = build_launch(make_spec(api_key="wk-do-not-leak"))

    assert not [a for a in launch.argv if "wk-do-not-leak" in a]
    assert "--api-key" not in launch.argv
    assert launch.env["VLLM_API_KEY"] == "wk-do-not-leak"


def test_it_refuses_a_spec_without_api_key():
    with pytest.raises(EngineArgsError, match="api_key"):
        build_launch(make_spec(api_key=""))


def test_it_reads_the_executable_from_berth_vllm_bin(monkeypatch):
    monkeypatch.setenv("BERTH_VLLM_BIN", "/srv/vllm-venv/bin/vllm")

    assert build_launch(make_spec()).argv[0] == "/srv/vllm-venv/bin/vllm"


def test_it_defaults_the_executable_to_vllm_on_path(monkeypatch):
    monkeypatch.delenv("BERTH_VLLM_BIN", raising=False)

    assert build_launch(make_spec()).argv[0] == "vllm"


def test_it_gives_the_worker_exactly_its_gpus():
    launch = build_launch(make_spec(gpu_indices=(5,), tensor_parallel_size=1))

    assert launch.env["CUDA_VISIBLE_DEVICES"] == "5"
    assert launch.argv[launch.argv.index("--tensor-parallel-size") + 1] == "1"


def test_it_leaves_cuda_visible_devices_alone_without_gpu_indices():
    # Kubernetes: the device plugin exposes only the pod's GPUs.
    launch = build_launch(make_spec(gpu_indices=(), tensor_parallel_size=4))

    assert "CUDA_VISIBLE_DEVICES" not in launch.env
    assert launch.argv[launch.argv.index("--tensor-parallel-size") + 1] == "4"


@pytest.mark.parametrize("gpus", [(0,), (0, 1, 2)])
def test_it_rejects_a_gpu_count_other_than_the_tp_size(gpus):
    with pytest.raises(EngineArgsError, match="tensor_parallel_size=2"):
        build_launch(make_spec(gpu_indices=gpus, tensor_parallel_size=2))


def test_it_rejects_a_gpu_given_twice():
    with pytest.raises(EngineArgsError, match="repeat"):
        build_launch(make_spec(gpu_indices=(1, 1)))


def test_it_rejects_tp_below_one():
    with pytest.raises(EngineArgsError, match="at least 1"):
        build_launch(make_spec(gpu_indices=(), tensor_parallel_size=0))


@pytest.mark.parametrize("source", ["/models/llama", "./models/llama", "../llama"])
def test_it_goes_offline_for_a_local_folder(source):
    assert build_launch(make_spec(source=source)).env["HF_HUB_OFFLINE"] == "1"


def test_it_stays_online_for_a_hub_repo():
    assert "HF_HUB_OFFLINE" not in build_launch(make_spec(source="Qwen/Qwen3-0.6B")).env


def test_it_serves_embedding_models_with_the_pooling_runner():
    args = serve_args(make_spec(task="embedding"))

    assert args[args.index("--runner") + 1] == "pooling"
    assert "--runner" not in serve_args(make_spec(task="chat"))


def test_lora_turns_on_with_max_loras_and_runtime_loading():
    launch = build_launch(make_spec(max_loras=4, max_cpu_loras=32, max_lora_rank=64))
    args = launch.argv

    assert "--enable-lora" in args
    assert args[args.index("--max-loras") + 1] == "4"
    assert args[args.index("--max-cpu-loras") + 1] == "32"
    assert args[args.index("--max-lora-rank") + 1] == "64"
    assert "--lora-modules" not in args  # adapters arrive at run time
    assert launch.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_lora_defaults_to_vllms_rank_and_cpu_cache():
    args = serve_args(make_spec(max_loras=1))

    assert args[args.index("--max-lora-rank") + 1] == "16"
    assert "--max-cpu-loras" not in args


def test_it_does_not_enable_lora_by_default():
    launch = build_launch(make_spec())
    assert not [a for a in launch.argv if "lora" in a]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in launch.env


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_lora_rank": 64}, "only with max_loras"),
        ({"max_cpu_loras": 2}, "only with max_loras"),
        ({"max_loras": -1}, "negative"),
        ({"max_loras": 2, "max_lora_rank": 48}, "max_lora_rank 48"),
        ({"max_loras": 4, "max_cpu_loras": 2}, "at least max_loras"),
    ],
)
def test_it_rejects_inconsistent_lora_settings(overrides, message):
    with pytest.raises(EngineArgsError, match=message):
        build_launch(make_spec(**overrides))


@pytest.mark.parametrize("flag", ["--lora-modules", "--max-cpu-loras", "--enable-lora"])
def test_extra_args_may_not_set_lora(flag):
    with pytest.raises(EngineArgsError):
        build_launch(make_spec(extra_args=(flag, "x=/y")))


def test_lora_rank_choices_match_vllm():
    from provisioning.engines.vllm import MAX_LORA_RANKS

    assert sorted(FLAGS["--max-lora-rank"]["choices"], key=int) == [str(r) for r in MAX_LORA_RANKS]


def test_dtype_choices_match_vllm():
    from provisioning.engines.vllm import DTYPES

    assert sorted(FLAGS["--dtype"]["choices"]) == sorted(DTYPES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dtype": "fp16"}, "dtype"),
        ({"gpu_memory_utilization": 1.5}, "fraction"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"port": 70000}, "port"),
        ({"engine": "cpu"}, "engine"),
    ],
)
def test_it_rejects_invalid_engine_settings(overrides, message):
    with pytest.raises(EngineArgsError, match=message):
        build_launch(make_spec(**overrides))


def test_it_always_schedules_by_request_priority():
    # The gateway sends every request with vLLM's `priority` (its service tier's rank); vLLM
    # refuses a non-zero priority under the default fcfs policy.
    for spec in (make_spec(), make_spec(task="embedding"), make_spec(max_loras=2)):
        args = serve_args(spec)
        assert args[args.index("--scheduling-policy") + 1] == "priority"
        assert args.count("--scheduling-policy") == 1


def test_it_appends_allowed_extra_args_last():
    args = serve_args(make_spec(extra_args=("--max-num-seqs", "128", "--seed", "-1", "--enforce-eager")))

    assert args[-5:] == ["--max-num-seqs", "128", "--seed", "-1", "--enforce-eager"]


@pytest.mark.parametrize(
    "extra",
    [
        ("--port", "9000"),
        ("--port=9000",),
        ("--host", "127.0.0.1"),
        ("--api-key", "mine"),
        ("--api_key=mine",),  # vLLM turns underscores into dashes
        # vLLM's parser resolves unambiguous prefixes: `--api_k x` sets api_key, `-t 3` sets TP.
        ("--api_k", "mine"),
        ("-t", "3"),
        ("--po", "9000"),
        ("-tp", "4"),
        ("--tensor-parallel-size=4",),
        ("-pp", "2"),
        ("--device-ids", "0,1"),
        ("--served-model-name", "other"),
        ("--model", "other"),
        ("--no-enable-prefix-caching",),
        ("--disable-prefix-caching",),
        ("--enable-force-include-usage",),
        ("--config", "/etc/berth/x.yaml"),
        ("--uds", "/run/vllm.sock"),
        ("--lora-modules", "x=/y"),
        ("--scheduling-policy", "fcfs"),
        ("--scheduling-policy=fcfs",),
    ],
)
def test_it_rejects_extra_args_that_override_berth_managed_flags(extra):
    with pytest.raises(EngineArgsError, match="would override"):
        build_launch(make_spec(extra_args=extra))


def test_managed_table_lists_every_spelling_vllm_accepts_for_those_options():
    recorded: dict[str, set[str]] = {}
    for flag, entry in FLAGS.items():
        recorded.setdefault(entry["dest"], set()).add(flag)

    for dest, spellings in MANAGED_OPTIONS.items():
        assert set(spellings) == recorded[dest], dest


def test_no_other_vllm_flag_is_mistaken_for_a_managed_one():
    managed_dests = set(MANAGED_OPTIONS)
    others = [f for f, e in FLAGS.items() if e["dest"] not in managed_dests and f not in ("-h", "--help")]

    assert len(others) > 400
    for flag in others:
        serve_args(make_spec(extra_args=(flag,)))  # raises if rejected


def test_managed_flags_are_all_recorded():
    assert MANAGED_FLAGS <= set(FLAGS)


def test_the_live_vllm_parser_accepts_the_command_line():
    pytest.importorskip("vllm")
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    ns = parser.parse_args(serve_args(full_spec()))

    assert ns.model_tag == "meta-llama/Llama-3.1-8B-Instruct"
    assert ns.served_model_name == ["llama-3-8b"]
    assert ns.port == 8101
    assert ns.tensor_parallel_size == 2
    assert ns.enable_prefix_caching is False
    assert ns.enable_lora is True
    assert ns.max_loras == 2
    assert ns.max_cpu_loras == 8
    assert ns.enable_server_load_tracking is True
    assert ns.disable_uvicorn_access_log is True
    assert not ns.enable_force_include_usage
