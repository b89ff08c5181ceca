"""Tool calling on vLLM workers: the registry's parser becomes ``--enable-auto-tool-choice
--tool-call-parser``, on the node agent's command line and in the Kubernetes pod alike."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from models_registry import mirror
from models_registry.models import Deployment, Model
from provisioning.engines.base import EngineSpec
from provisioning.engines.vllm import TOOL_CALL_PARSERS, EngineArgsError, serve_args
from provisioning.k8s.manifests import render_deployment
from provisioning.k8s.sync import group_for


def spec(**overrides) -> EngineSpec:
    fields = {
        "engine": "vllm",
        "served_name": "qwen",
        "source": "Qwen/Qwen2.5-7B-Instruct",
        "task": "chat",
        "host": "127.0.0.1",
        "port": 8100,
        "api_key": "k",
    }
    return EngineSpec(**{**fields, **overrides})


def test_a_parser_turns_on_automatic_tool_choice():
    args = serve_args(spec(tool_call_parser="hermes", reasoning_parser="qwen3"))
    i = args.index("--enable-auto-tool-choice")
    assert args[i + 1 : i + 3] == ["--tool-call-parser", "hermes"]
    assert args[args.index("--reasoning-parser") + 1] == "qwen3"


def test_no_parser_no_tool_flags():
    args = serve_args(spec())
    assert not {"--enable-auto-tool-choice", "--tool-call-parser", "--reasoning-parser"} & set(args)


@pytest.mark.parametrize("field", ["tool_call_parser", "reasoning_parser"])
def test_an_unknown_parser_is_refused(field):
    with pytest.raises(EngineArgsError, match=field):
        serve_args(spec(**{field: "nonsense"}))


@pytest.mark.parametrize(
    "flag", ["--tool-call-parser=hermes", "--enable-auto-tool-choice", "--reasoning-parser"]
)
def test_extra_args_may_not_set_the_tool_flags(flag):
    with pytest.raises(EngineArgsError):
        serve_args(spec(extra_args=(flag,)))


@pytest.mark.django_db
def test_the_registry_field_reaches_kubernetes_and_the_mirror(redis_client):
    model = Model.objects.create(
        name="qwen-tools", source="Qwen/Qwen2.5-7B-Instruct", tool_call_parser="hermes", gpu_memory_gb=20
    )
    deployment = Deployment.objects.create(model=model)
    container = render_deployment(group_for(deployment))["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in args
    assert mirror.entry(model)["tool_call_parser"] == "hermes"
    assert mirror.entry(Model(name="plain", source="x/y"))["tool_call_parser"] == ""


@pytest.mark.django_db
def test_the_registry_refuses_a_parser_vllm_does_not_have():
    model = Model(name="bad-parser", source="x/y", tool_call_parser="nonsense")
    with pytest.raises(ValidationError) as error:
        model.full_clean()
    assert "tool_call_parser" in error.value.message_dict
    assert "hermes" in TOOL_CALL_PARSERS and "llama3_json" in TOOL_CALL_PARSERS
