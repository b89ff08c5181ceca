"""integrity.manifest: manifests of model folders and verification, with and without the digest cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integrity import DigestCache, Manifest, VerificationFailed, manifest_for_folder, verify_folder
from integrity import manifest as manifest_module
from integrity.manifest import check_folder

ROOT = Path(__file__).resolve().parents[2]


def make_model(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.lock").write_text("x")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs")
    return folder


@pytest.fixture
def short_racy_window(monkeypatch) -> None:
    """Files written by the test count as settled after 50 ms instead of two seconds."""
    monkeypatch.setattr(manifest_module, "RACY_SECONDS", 0.05)


def settle() -> None:
    time.sleep(0.1)


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_it_lists_every_file_with_size_and_sha256(tmp_path):
    folder = make_model(tmp_path / "m")
    manifest = manifest_for_folder(folder, source="org/m", revision="abc123")
    weights = (folder / "model.safetensors").read_bytes()
    assert {f.path: (f.size, f.sha256) for f in manifest.files} == {
        "config.json": (18, hashlib.sha256(b'{"hidden_size": 8}').hexdigest()),
        "model.safetensors": (len(weights), hashlib.sha256(weights).hexdigest()),
        "sub/tokenizer.json": (13, hashlib.sha256(b'{"vocab": {}}').hexdigest()),
    }
    assert (manifest.source, manifest.revision) == ("org/m", "abc123")


def test_its_digest_is_the_sha256_of_the_canonical_json(tmp_path):
    manifest = manifest_for_folder(make_model(tmp_path / "m"), source="org/m")
    canonical = manifest.canonical_json()
    assert manifest.digest == "sha256:" + hashlib.sha256(canonical).hexdigest()
    assert canonical == json.dumps(json.loads(canonical), sort_keys=True, separators=(",", ":")).encode()
    # Round trip through JSON (the database, an env var) keeps the digest.
    assert Manifest.from_json(canonical).digest == manifest.digest
    # The same bytes elsewhere give the same digest; one changed byte gives another.
    other = manifest_for_folder(make_model(tmp_path / "copy"), source="org/m")
    assert other.digest == manifest.digest
    flip_byte(tmp_path / "copy" / "model.safetensors")
    assert manifest_for_folder(tmp_path / "copy", source="org/m").digest != manifest.digest


def test_an_untouched_folder_verifies(tmp_path):
    folder = make_model(tmp_path / "m")
    assert verify_folder(folder, manifest_for_folder(folder)) == []


def test_it_names_a_changed_a_missing_and_an_extra_file(tmp_path):
    folder = make_model(tmp_path / "m")
    manifest = manifest_for_folder(folder)
    flip_byte(folder / "model.safetensors")
    (folder / "sub" / "tokenizer.json").unlink()
    (folder / "extra.safetensors").write_bytes(b"\0" * 10)
    problems = {(m.path, m.problem) for m in verify_folder(folder, manifest)}
    assert problems == {
        ("model.safetensors", "changed"),
        ("sub/tokenizer.json", "missing"),
        ("extra.safetensors", "extra"),
    }
    with pytest.raises(VerificationFailed, match=r"model\.safetensors does not match the manifest"):
        check_folder(folder, manifest)


def test_a_truncated_file_is_reported_by_size(tmp_path):
    folder = make_model(tmp_path / "m")
    manifest = manifest_for_folder(folder)
    (folder / "model.safetensors").write_bytes(b"short")
    [mismatch] = verify_folder(folder, manifest)
    assert mismatch.path == "model.safetensors"
    assert "5 bytes" in str(mismatch)


def test_dot_files_are_neither_listed_nor_extra(tmp_path):
    folder = make_model(tmp_path / "m")
    manifest = manifest_for_folder(folder)
    assert not any(f.path.startswith(".") or "/." in f.path for f in manifest.files)
    (folder / ".cache" / "another").write_text("y")
    assert verify_folder(folder, manifest) == []


def test_it_follows_links_as_in_a_hub_snapshot(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "aaa").write_bytes(b"weights")
    snapshot = tmp_path / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blobs / "aaa")
    manifest = manifest_for_folder(snapshot)
    assert [(f.path, f.size) for f in manifest.files] == [("model.safetensors", 7)]
    (blobs / "aaa").write_bytes(b"WEIGHTS")
    assert [m.path for m in verify_folder(snapshot, manifest)] == ["model.safetensors"]


def test_the_cache_skips_rehashing_an_unchanged_file(tmp_path, short_racy_window):
    folder = make_model(tmp_path / "m")
    settle()
    manifest = manifest_for_folder(folder)
    cache_file = tmp_path / "node" / "digests.json"
    first = DigestCache(cache_file)
    assert verify_folder(folder, manifest, cache=first) == []
    assert (first.hits, first.misses) == (0, 3)
    again = DigestCache(cache_file)  # a restart: a new process reading the same file
    assert verify_folder(folder, manifest, cache=again) == []
    assert (again.hits, again.misses) == (3, 0)


def test_the_cache_rehashes_a_changed_file_even_with_its_mtime_put_back(tmp_path, short_racy_window):
    folder = make_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    settle()
    manifest = manifest_for_folder(folder)
    cache_file = tmp_path / "digests.json"
    assert verify_folder(folder, manifest, cache=DigestCache(cache_file)) == []
    before = weights.stat()
    settle()
    flip_byte(weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime as it was
    assert weights.stat().st_mtime_ns == before.st_mtime_ns
    cache = DigestCache(cache_file)
    assert [m.path for m in verify_folder(folder, manifest, cache=cache)] == ["model.safetensors"]
    assert cache.misses == 1


def test_a_file_written_just_before_hashing_is_not_cached(tmp_path):
    folder = make_model(tmp_path / "m")  # every file was written just now: racy
    cache = DigestCache(tmp_path / "digests.json")
    verify_folder(folder, manifest_for_folder(folder), cache=cache)
    assert (
        not (tmp_path / "digests.json").exists() or json.loads((tmp_path / "digests.json").read_text()) == {}
    )


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "integrity", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_the_command_line_writes_and_verifies_a_manifest(tmp_path):
    folder = make_model(tmp_path / "m")
    made = _cli("manifest", str(folder), "--source", "org/m")
    assert made.returncode == 0, made.stderr
    manifest = Manifest.from_json(made.stdout)
    assert manifest.digest in made.stderr
    (tmp_path / "manifest.json").write_text(made.stdout)

    ok = _cli(
        "verify", str(folder), "--manifest", str(tmp_path / "manifest.json"), "--digest", manifest.digest
    )
    assert ok.returncode == 0, ok.stderr
    # The init-container form: the manifest in an environment variable, pinned by its digest.
    env = {"BERTH_MANIFEST": made.stdout}
    assert (
        _cli(
            "verify", str(folder), "--manifest-env", "BERTH_MANIFEST", "--digest", manifest.digest, env=env
        ).returncode
        == 0
    )
    wrong = _cli("verify", str(folder), "--manifest-env", "BERTH_MANIFEST", "--digest", "sha256:00", env=env)
    assert wrong.returncode == 2
    assert "expected sha256:00" in wrong.stderr

    flip_byte(folder / "model.safetensors")
    failed = _cli("verify", str(folder), "--manifest", str(tmp_path / "manifest.json"))
    assert failed.returncode == 1
    assert "model.safetensors does not match the manifest" in failed.stderr
