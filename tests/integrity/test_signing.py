"""OpenSSF model-signing signatures, key-based (offline), with a key pair made by the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("model_signing")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from integrity import manifest_for_folder  # noqa: E402
from integrity.signing import (
    KEY,
    SIGNATURE_FILE,
    SignatureError,
    SignaturePolicy,
    sign_with_key,
    verify_signature,
)  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def key_pair() -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public.decode()


@pytest.fixture
def signed(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x09" * 2048)
    private, public = key_pair()
    sign_with_key(folder, private)
    return folder, SignaturePolicy(kind=KEY, public_key_pem=public)


def test_a_signed_model_verifies_with_the_signers_key(signed):
    folder, policy = signed
    assert (folder / SIGNATURE_FILE).is_file()
    verify_signature(folder, policy)


def test_a_changed_file_fails_naming_it(signed):
    folder, policy = signed
    (folder / "config.json").write_text("[]")
    with pytest.raises(SignatureError, match="config.json"):
        verify_signature(folder, policy)


def test_an_added_file_fails(signed):
    folder, policy = signed
    (folder / "extra.safetensors").write_bytes(b"\x00")
    with pytest.raises(SignatureError, match="extra.safetensors"):
        verify_signature(folder, policy)


def test_another_key_is_refused(signed):
    folder, _ = signed
    _, stranger = key_pair()
    with pytest.raises(SignatureError, match="does not verify against the registered public key"):
        verify_signature(folder, SignaturePolicy(kind=KEY, public_key_pem=stranger))


def test_an_unsigned_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SignatureError, match="model.sig is missing"):
        verify_signature(tmp_path, SignaturePolicy(kind=KEY, public_key_pem="x"))


def test_the_command_line_checks_the_signature_after_the_manifest(signed, tmp_path):
    folder, policy = signed
    (tmp_path / "manifest.json").write_bytes(manifest_for_folder(folder).canonical_json())
    (tmp_path / "key.pub").write_text(policy.public_key_pem)

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(  # noqa: S603 - our own module
            [sys.executable, "-m", "integrity", "verify", str(folder), "--manifest", str(tmp_path / "manifest.json"),
             "--public-key", str(tmp_path / "key.pub")],
            capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=60,
        )  # fmt: skip

    assert run().returncode == 0
    _, stranger = key_pair()
    (tmp_path / "key.pub").write_text(stranger)
    failed = run()
    assert failed.returncode == 1 and "does not verify" in failed.stderr
