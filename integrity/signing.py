"""Signatures in the OpenSSF model-signing format (``pip install 'berth[signing]'``).

A model whose registry entry requires a signature must carry ``model.sig`` at the root of its
folder, as ``model_signing sign`` writes it (it leaves the signature file itself out of what it
signs). Two ways to trust it:

* ``key``: an elliptic-curve public key (PEM) kept in the registry. Works offline.
* ``sigstore``: keyless, the signer's OIDC identity and issuer. Verifying reads the Sigstore trust
  root and checks the certificate and transparency-log entry, so it needs Sigstore's services
  (Fulcio, Rekor, the TUF root) reachable from the node or pod.

The package and its dependencies (sigstore, cryptography, pyOpenSSL, tuf, ...) are imported only
here and only when a model requires a signature: nodes that serve no signed model do without.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIGNATURE_FILE = "model.sig"
KEY = "key"
SIGSTORE = "sigstore"


class SignatureError(Exception):
    """The model's signature is missing, malformed or does not match; the message says which."""


@dataclass(frozen=True)
class SignaturePolicy:
    kind: str  # KEY | SIGSTORE
    public_key_pem: str = ""
    identity: str = ""
    issuer: str = ""

    def describe(self) -> str:
        if self.kind == SIGSTORE:
            return f"sigstore identity {self.identity} ({self.issuer})"
        return "the registered public key"


def _model_signing() -> tuple[Any, Any]:
    try:
        import model_signing  # noqa: F401 - the submodules below need the package initialised
        from model_signing import signing, verifying
    except ImportError as exc:
        raise SignatureError(
            f"this model requires a signature but model-signing is not installed here "
            f"(pip install 'berth[signing]'): {exc}"
        ) from exc
    return signing, verifying


def verify_signature(folder: str | os.PathLike[str], policy: SignaturePolicy) -> None:
    """Raise ``SignatureError`` unless ``folder/model.sig`` signs exactly the folder's files."""
    folder = Path(folder)
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise SignatureError(f"{SIGNATURE_FILE} is missing from {folder}; the model must be signed")
    _, verifying = _model_signing()
    base: Any = verifying.Config

    class Config(base):
        # As the model_signing CLI does: the signature file inside the folder is not a model file.
        # The hashing settings (file or shard serialization, symlinks) are the signer's, read from
        # the signed manifest.
        def _guess_hashing_config(self, source_manifest) -> None:
            super()._guess_hashing_config(source_manifest)
            self._hashing_config.add_ignored_paths(model_path=folder, paths=[SIGNATURE_FILE])

    config = Config()
    with tempfile.TemporaryDirectory(prefix="berth-sig-") as tmp:
        if policy.kind == KEY:
            if not policy.public_key_pem.strip():
                raise SignatureError("the model requires a key signature but has no public key")
            key_file = Path(tmp) / "key.pub"
            key_file.write_text(policy.public_key_pem)
            config = config.use_elliptic_key_verifier(public_key=key_file)
        elif policy.kind == SIGSTORE:
            if not (policy.identity and policy.issuer):
                raise SignatureError("the model requires a sigstore signature but has no identity/issuer")
            config = config.use_sigstore_verifier(identity=policy.identity, oidc_issuer=policy.issuer)
        else:
            raise SignatureError(f"unknown signature kind {policy.kind!r}")
        try:
            config.verify(folder, signature)
        except Exception as exc:  # noqa: BLE001 - the library raises ValueError and others
            detail = str(exc)
            detail = detail if len(detail) <= 400 else detail[:400] + "…"
            raise SignatureError(
                f"{SIGNATURE_FILE} does not verify against {policy.describe()}: {detail}"
            ) from exc


def sign_with_key(
    folder: str | os.PathLike[str], private_key_pem: bytes, *, password: str | None = None
) -> Path:
    """Sign ``folder`` into ``folder/model.sig`` with an elliptic-curve private key (PEM).

    What an operator does once after pulling (or what ``model_signing sign key`` does); Berth
    itself only verifies.
    """
    folder = Path(folder)
    signing, _ = _model_signing()
    with tempfile.TemporaryDirectory(prefix="berth-sig-") as tmp:
        key_file = Path(tmp) / "key.priv"
        key_file.write_bytes(private_key_pem)
        signing.Config().use_elliptic_key_signer(private_key=key_file, password=password).sign(
            folder, folder / SIGNATURE_FILE
        )
    return folder / SIGNATURE_FILE
