"""``python -m integrity``: write a folder's manifest, or verify a folder against one.

``manifest FOLDER`` prints the manifest JSON (its digest on stderr). ``verify FOLDER`` exits 0 when
the folder matches, 1 with one line per differing file when it does not, 2 on bad input. The
Kubernetes backend runs ``verify --fetch`` in an init container of the Berth image: it downloads
the pinned Hub snapshot into FOLDER on the model volume, then verifies it, and the engine
container serves that folder only if this exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from integrity.manifest import DigestCache, Manifest, manifest_for_folder, verify_folder


def _load_manifest(args: argparse.Namespace) -> Manifest:
    if args.manifest_env:
        text = os.environ.get(args.manifest_env, "")
        if not text:
            raise ValueError(f"environment variable {args.manifest_env} is empty")
    elif args.manifest == "-":
        text = sys.stdin.read()
    else:
        text = Path(args.manifest).read_text()
    manifest = Manifest.from_json(text)
    if args.digest and manifest.digest != args.digest:
        raise ValueError(f"the manifest's digest is {manifest.digest}, expected {args.digest}")
    return manifest


def _fetch(manifest: Manifest, folder: Path, args: argparse.Namespace) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        args.fetch or manifest.source,
        revision=manifest.revision or None,
        local_dir=str(folder),
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )


def _signature_policy(args: argparse.Namespace):
    from integrity.signing import KEY, SIGSTORE, SignaturePolicy

    if args.public_key:
        return SignaturePolicy(kind=KEY, public_key_pem=Path(args.public_key).read_text())
    if args.public_key_env:
        return SignaturePolicy(kind=KEY, public_key_pem=os.environ.get(args.public_key_env, ""))
    if args.sigstore_identity:
        return SignaturePolicy(
            kind=SIGSTORE, identity=args.sigstore_identity, issuer=args.sigstore_issuer or ""
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integrity", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("manifest", help="print the manifest of a folder")
    make.add_argument("folder")
    make.add_argument("--source", default="")
    make.add_argument("--revision", default="")
    check = commands.add_parser("verify", help="verify a folder against a manifest")
    check.add_argument("folder")
    where = check.add_mutually_exclusive_group(required=True)
    where.add_argument("--manifest", help="manifest JSON file, or - for stdin")
    where.add_argument("--manifest-env", help="environment variable holding the manifest JSON")
    check.add_argument("--digest", help="refuse a manifest whose digest is not this (sha256:...)")
    check.add_argument("--cache", help="digest cache file (default: rehash every file)")
    check.add_argument(
        "--public-key", help="also require FOLDER/model.sig signed by this EC public key (PEM)"
    )
    check.add_argument("--public-key-env", help="the same, the PEM read from this environment variable")
    check.add_argument(
        "--sigstore-identity", help="also require FOLDER/model.sig signed by this Sigstore identity"
    )
    check.add_argument("--sigstore-issuer", help="the Sigstore identity's OIDC issuer")
    check.add_argument(
        "--fetch",
        nargs="?",
        const="",
        default=None,
        help="download the Hub snapshot (repo id, default the manifest's source) at the manifest's "
        "revision into FOLDER first",
    )
    args = parser.parse_args(argv)

    if args.command == "manifest":
        manifest = manifest_for_folder(args.folder, source=args.source, revision=args.revision)
        sys.stdout.write(manifest.canonical_json().decode() + "\n")
        sys.stderr.write(f"{manifest.digest} ({len(manifest.files)} files, {manifest.total_bytes} bytes)\n")
        return 0

    try:
        manifest = _load_manifest(args)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"integrity: {exc}\n")
        return 2
    folder = Path(args.folder)
    if args.fetch is not None:
        folder.mkdir(parents=True, exist_ok=True)
        _fetch(manifest, folder, args)
    mismatches = verify_folder(folder, manifest, cache=DigestCache(args.cache) if args.cache else None)
    if mismatches:
        for mismatch in mismatches:
            sys.stderr.write(f"integrity: {mismatch}\n")
        sys.stderr.write(f"integrity: {folder} FAILED verification against {manifest.digest}\n")
        return 1
    policy = _signature_policy(args)
    if policy is not None:
        from integrity.signing import SignatureError, verify_signature

        try:
            verify_signature(folder, policy)
        except SignatureError as exc:
            sys.stderr.write(f"integrity: {exc}\n")
            return 1
    sys.stdout.write(f"integrity: {folder} matches {manifest.digest} ({len(manifest.files)} files)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
