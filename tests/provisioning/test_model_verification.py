"""Before an engine starts, its model's files are verified against the manifest.

A mismatch fails the worker with a reason naming the file, an ``integrity`` event and a count in
``berth_model_verification_failures_total``, and no engine process. The last test runs the real
node agent and CPU engine on the tiny model.
"""

from __future__ import annotations

import shutil

import pytest

from models_registry.constants import Engine, SourceKind
from models_registry.models import Model, ModelManifest
from provisioning import agent as agent_module
from provisioning import operations, reconciler, verification
from provisioning.constants import EventKind, WorkerState
from provisioning.engines.base import EngineSpec
from provisioning.models import Worker, WorkerEvent
from tests.provisioning.conftest import wait_for
from tests.registry.factories import DeploymentFactory, ModelFactory, NodeFactory


def flip_byte(path, offset: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "tiny"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\x07" * 1024)
    return path


def starting_worker(model: Model) -> Worker:
    node = NodeFactory()
    deployment = DeploymentFactory(model=model, engine=Engine.CPU)
    return Worker.objects.create(
        deployment=deployment, node=node, cpu_slot=0, state=WorkerState.STARTING, api_key="k"
    )


@pytest.mark.django_db
class TestBeforeStart:
    def test_an_untouched_model_passes(self, folder, settings, tmp_path):
        settings.MODEL_DIGEST_CACHE = tmp_path / "digests.json"
        worker = starting_worker(ModelFactory(name="ver-ok", source=str(folder)))
        check = verification.before_start(worker)
        assert check.ok
        assert check.verified.digest == ModelManifest.objects.get(model__name="ver-ok").digest
        assert Worker.objects.get(pk=worker.pk).state == WorkerState.STARTING

    def test_a_changed_byte_fails_the_worker_naming_the_file(self, folder, settings, tmp_path, client):
        settings.MODEL_DIGEST_CACHE = tmp_path / "digests.json"
        worker = starting_worker(ModelFactory(name="ver-bad", source=str(folder)))
        flip_byte(folder / "model.safetensors")
        assert not verification.before_start(worker).ok
        worker.refresh_from_db()
        assert worker.state == WorkerState.FAILED
        assert "model.safetensors does not match the manifest" in worker.failure_reason
        assert worker.crashed
        event = WorkerEvent.objects.get(worker=worker, kind=EventKind.INTEGRITY)
        assert "model.safetensors" in event.message
        metrics = client.get("/internal/metrics").content.decode()
        assert 'berth_model_verification_failures_total{model="ver-bad"} 1' in metrics

    def test_a_missing_and_an_extra_weight_file_are_named(self, folder, settings):
        settings.MODEL_VERIFICATION = "full"
        worker = starting_worker(ModelFactory(name="ver-swap", source=str(folder)))
        (folder / "model.safetensors").rename(folder / "model-00001.safetensors")
        assert not verification.before_start(worker).ok
        worker.refresh_from_db()
        assert "model.safetensors is missing" in worker.failure_reason
        assert "model-00001.safetensors is not in the manifest" in worker.failure_reason

    def test_a_model_without_a_manifest_starts_unverified(self, tmp_path):
        worker = starting_worker(ModelFactory(name="ver-none", source=str(tmp_path / "not-here")))
        check = verification.before_start(worker)
        assert check.ok and check.verified is None

    def test_a_source_changed_behind_the_catalogs_back_is_refused(self, folder, tmp_path):
        model = ModelFactory(name="ver-moved", source=str(folder))
        Model.objects.filter(pk=model.pk).update(source=str(tmp_path / "elsewhere"))
        worker = starting_worker(Model.objects.get(pk=model.pk))
        assert not verification.before_start(worker).ok
        worker.refresh_from_db()
        assert "source does not match the manifest" in worker.failure_reason

    def test_a_hub_model_is_served_from_its_verified_snapshot(self, folder, monkeypatch):
        model = ModelFactory(name="ver-hub", source_kind=SourceKind.HUGGINGFACE, source="org/tiny")
        from models_registry import manifests

        manifests.record_folder(model=model, folder=folder, source="org/tiny", revision="abc123")
        asked = []
        monkeypatch.setattr(
            verification, "_snapshot", lambda source, revision: asked.append(revision) or folder
        )
        check = verification.before_start(starting_worker(model))
        assert asked == ["abc123"] and check.ok
        spec = EngineSpec(
            engine="vllm",
            served_name="ver-hub",
            source="org/tiny",
            task="chat",
            host="h",
            port=1,
            api_key="k",
            revision="main",
        )
        pinned = check.pin(spec)
        assert (pinned.source, pinned.revision) == (str(folder), None)

    def test_the_agent_never_builds_an_engine_for_a_failed_check(self, folder, monkeypatch):
        worker = starting_worker(ModelFactory(name="ver-agent", source=str(folder)))
        flip_byte(folder / "config.json", offset=0)
        monkeypatch.setattr(agent_module, "build_launch", lambda spec: pytest.fail("engine built"))
        agent = agent_module.Agent(name=worker.node.name, address="127.0.0.1", cpu_slots=1)
        assert agent._launch(worker) == "model files failed verification"
        assert not WorkerEvent.objects.filter(worker=worker, kind=EventKind.SPAWNED).exists()


pytest.importorskip("provisioning.engines.cpu")
tiny_model = pytest.importorskip("cpu_engine.tiny_model")


@pytest.fixture(scope="session")
def tiny_model_source(tmp_path_factory):
    return tiny_model.create_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.mark.django_db(transaction=True)
def test_a_byte_changed_in_the_tiny_models_weights_stops_the_next_worker(
    agents, tiny_model_source, tmp_path, settings
):
    settings.WORKER_START_TIMEOUT = 120
    folder = shutil.copytree(tiny_model_source, tmp_path / "tiny-copy")
    agents.start("verify", cpu_slots=1, extra_env={"BERTH_ENGINE_LAUNCHER_OVERRIDE": ""})
    agents.wait_consuming("verify")
    model = ModelFactory(
        name="tiny-verified", source=str(folder), source_kind=SourceKind.LOCAL, context_length=2048
    )
    assert ModelManifest.objects.current_for(model) is not None
    deployment = DeploymentFactory(model=model, engine=Engine.CPU, desired_replicas=1)

    def no_failure():
        bad = Worker.objects.filter(deployment=deployment, state=WorkerState.FAILED).first()
        assert bad is None, f"engine failed: {bad.failure_reason}"

    # The untouched model starts and serves.
    first = wait_for(
        lambda: Worker.objects.filter(deployment=deployment, state=WorkerState.READY).first(),
        step=lambda: (reconciler.reconcile(), no_failure()),
        timeout=120,
        what="the verified engine ready",
    )
    operations.scale(deployment=deployment, replicas=0, actor=None)
    wait_for(
        lambda: Worker.objects.filter(pk=first.pk, state=WorkerState.STOPPED).exists(),
        step=reconciler.reconcile,
        what="the first engine stopped",
    )

    # The engine wrote nothing into the folder: an unchanged model would start again.
    assert verification.verify_folder(folder, ModelManifest.objects.current_for(model).as_manifest()) == []
    flip_byte(folder / "model.safetensors", offset=4096)
    operations.scale(deployment=deployment, replicas=1, actor=None)
    failed = wait_for(
        lambda: Worker.objects.filter(deployment=deployment, state=WorkerState.FAILED).first(),
        step=reconciler.reconcile,
        timeout=60,
        what="the next worker refused",
    )
    assert "model.safetensors does not match the manifest" in failed.failure_reason
    assert failed.pid is None
    assert not WorkerEvent.objects.filter(worker=failed, kind=EventKind.SPAWNED).exists()
    assert WorkerEvent.objects.filter(worker=failed, kind=EventKind.INTEGRITY).exists()


@pytest.mark.django_db
class TestSignatureRequired:
    """A registry entry that requires a model-signing signature starts only on a folder it verifies."""

    @pytest.fixture
    def keys(self):
        pytest.importorskip("model_signing")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return private, public.decode()

    def test_a_signed_model_starts(self, folder, keys):
        from integrity.signing import sign_with_key

        sign_with_key(folder, keys[0])
        model = ModelFactory(name="sig-ok", source=str(folder), signature="key", signature_public_key=keys[1])
        assert verification.before_start(starting_worker(model)).ok

    def test_an_unsigned_model_fails_with_an_integrity_event(self, folder, keys):
        model = ModelFactory(
            name="sig-missing", source=str(folder), signature="key", signature_public_key=keys[1]
        )
        worker = starting_worker(model)
        assert not verification.before_start(worker).ok
        worker.refresh_from_db()
        assert "model.sig is missing" in worker.failure_reason
        assert WorkerEvent.objects.filter(worker=worker, kind=EventKind.INTEGRITY).exists()

    def test_a_model_signed_by_another_key_fails(self, folder, keys, settings):
        from integrity.signing import sign_with_key

        sign_with_key(folder, keys[0])
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        stranger = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        model = ModelFactory(
            name="sig-other", source=str(folder), signature="key", signature_public_key=stranger
        )
        worker = starting_worker(model)
        assert not verification.before_start(worker).ok
        worker.refresh_from_db()
        assert "does not verify against the registered public key" in worker.failure_reason
