"""Kubernetes engine pods verify their weights first: an init container of the Berth image runs
``python -m integrity verify`` against the model's manifest, and vLLM serves the verified folder."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from integrity import Manifest, manifest_for_folder
from models_registry.constants import Engine
from models_registry.models import ModelManifest
from provisioning.k8s import render_manifests
from provisioning.k8s.manifests import VERIFY_CONTAINER_NAME
from provisioning.k8s.sync import group_for
from tests.kube.conftest import make_group
from tests.registry.factories import DeploymentFactory, ModelFactory

ROOT = Path(__file__).resolve().parents[2]


def pod_of(deployment):
    return deployment["spec"]["template"]["spec"]


def weights(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x03" * 2048)
    return folder


def hub_group(tmp_path):
    manifest = manifest_for_folder(
        weights(tmp_path / "snap"), source="meta-llama/Llama-3.1-8B-Instruct", revision="c0ffee"
    )
    group = make_group(
        manifest_json=manifest.canonical_json().decode(),
        manifest_digest=manifest.digest,
        verify_image="registry.internal/berth:1.4",
        hf_token_secret="hf-token",
    )
    return group, manifest


@pytest.mark.parametrize("k8s_version", ["1.37.0", "1.33.0"])
def test_the_pod_with_an_init_container_is_a_valid_kubernetes_object(tmp_path, k8s_version):
    group, _ = hub_group(tmp_path)
    for manifest in render_manifests(group):
        kubernetes_validate.validate(manifest, k8s_version, strict=True)


def test_a_hub_model_is_fetched_verified_and_served_from_the_verified_folder(tmp_path):
    group, manifest = hub_group(tmp_path)
    deployment, _ = render_manifests(group)
    [init] = pod_of(deployment)["initContainers"]
    folder = f"/models/verified/{manifest.digest.removeprefix('sha256:')[:32]}"
    assert init["name"] == VERIFY_CONTAINER_NAME
    assert init["image"] == "registry.internal/berth:1.4"
    assert init["command"] == [
        "python", "-m", "integrity", "verify", folder,
        "--manifest-env", "BERTH_MANIFEST", "--digest", manifest.digest, "--fetch",
    ]  # fmt: skip
    env = {e["name"]: e for e in init["env"]}
    assert Manifest.from_json(env["BERTH_MANIFEST"]["value"]).digest == manifest.digest
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert {"name": "model-cache", "mountPath": "/models"} in init["volumeMounts"]
    engine = pod_of(deployment)["containers"][0]
    assert engine["args"][0] == folder  # vllm serve <verified folder>
    assert "--revision" not in engine["args"]


def test_without_a_manifest_there_is_no_init_container():
    deployment, _ = render_manifests(make_group())
    assert "initContainers" not in pod_of(deployment)


def run_init_container(init: dict) -> subprocess.CompletedProcess:
    """The init container's command and environment, run here with this checkout's Python."""
    env = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    return subprocess.run(  # noqa: S603 - the rendered command of our own module
        [sys.executable, *init["command"][1:]],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )


def test_the_rendered_init_container_passes_good_weights_and_stops_changed_ones(tmp_path):
    folder = weights(tmp_path / "local-model")
    manifest = manifest_for_folder(folder)
    group = make_group(
        engine=dataclasses.replace(make_group().engine, source=str(folder)),
        manifest_json=manifest.canonical_json().decode(),
        manifest_digest=manifest.digest,
    )
    deployment, _ = render_manifests(group)
    [init] = pod_of(deployment)["initContainers"]
    assert "--fetch" not in init["command"]  # a local folder is verified where it is
    ok = run_init_container(init)
    assert ok.returncode == 0, ok.stderr
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    failed = run_init_container(init)
    assert failed.returncode == 1
    assert "model.safetensors does not match the manifest" in failed.stderr


@pytest.mark.django_db
def test_the_sync_passes_the_models_current_manifest(tmp_path, settings):
    settings.K8S_BERTH_IMAGE = "berth:test"
    folder = weights(tmp_path / "registered")
    model = ModelFactory(name="kube-verified", source=str(folder), tensor_parallel_size=1)
    group = group_for(DeploymentFactory(model=model, engine=Engine.VLLM))
    row = ModelManifest.objects.current_for(model)
    assert (group.manifest_digest, group.verify_image) == (row.digest, "berth:test")
    assert Manifest.from_json(group.manifest_json).digest == row.digest
    unverified = group_for(DeploymentFactory(model=ModelFactory(name="kube-plain"), engine=Engine.VLLM))
    assert unverified.manifest_json is None


def test_a_required_signature_is_checked_by_the_init_container(tmp_path):
    pytest.importorskip("model_signing")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from integrity.signing import sign_with_key

    folder = weights(tmp_path / "signed-model")
    key = ec.generate_private_key(ec.SECP256R1())
    sign_with_key(
        folder,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    manifest = manifest_for_folder(folder)
    group = make_group(
        engine=dataclasses.replace(make_group().engine, source=str(folder)),
        manifest_json=manifest.canonical_json().decode(),
        manifest_digest=manifest.digest,
        signature="key",
        signature_public_key=public.decode(),
    )
    deployment, _ = render_manifests(group)
    kubernetes_validate.validate(deployment, "1.37.0", strict=True)
    [init] = pod_of(deployment)["initContainers"]
    assert init["command"][-2:] == ["--public-key-env", "BERTH_SIGNATURE_KEY"]
    assert run_init_container(init).returncode == 0
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    for entry in init["env"]:
        if entry["name"] == "BERTH_SIGNATURE_KEY":
            entry["value"] = stranger.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
    refused = run_init_container(init)
    assert refused.returncode == 1 and "does not verify" in refused.stderr
