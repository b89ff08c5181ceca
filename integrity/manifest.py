"""Manifests of model folders, and the check that a folder still matches its manifest.

A manifest lists every file of a model folder (path relative to the folder, size, sha256), where
the folder came from (``source``, ``revision``: for a Hub model the resolved commit) and is
identified by its digest: ``sha256:`` + the sha256 of its canonical JSON (keys sorted, no
whitespace, UTF-8, files sorted by path). The same bytes give the same digest on every machine.

What a folder holds: every regular file below it, symbolic links followed (a Hub cache snapshot
is a folder of links to blobs), except names starting with ``.`` at any depth (``.cache/`` that
``hf download --local-dir`` writes, ``.git``, ``.gitattributes``): no engine loads those.
Verification reports a file whose bytes changed, a missing file and an extra file, each by name.

Threat model of the digest cache (``DigestCache``): hashing a large model costs about a second per
gigabyte, so a node remembers each file's digest keyed by its real path, device, inode, size,
modification time and change time (nanoseconds). Any write to a file moves its mtime and ctime,
and setting the mtime back (``touch -d``) moves the ctime, which no unprivileged call can set:
corruption and tampering by anyone without root between registration and start are caught. An
attacker with root on the node (who can change the clock, write the block device, or edit the
cache file) is not: against that, verify with ``cache=None`` (``--no-cache``), which rehashes every
byte, or require a signature. As in git's "racy" index, a file modified within
``RACY_SECONDS`` of being hashed is not cached, so a write in the same timestamp tick is seen.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "berth.manifest/1"
CHUNK = 8 * 1024 * 1024
RACY_SECONDS = 2.0


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the folder, with "/" separators
    size: int
    sha256: str  # hex

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]
    source: str = ""
    revision: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "source": self.source,
            "revision": self.revision,
            "files": [f.as_dict() for f in sorted(self.files, key=lambda f: f.path)],
        }

    def canonical_json(self) -> bytes:
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest")
        try:
            files = tuple(
                FileEntry(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]).lower())
                for f in data["files"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed manifest: {exc}") from exc
        return cls(
            files=files, source=str(data.get("source") or ""), revision=str(data.get("revision") or "")
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Mismatch:
    path: str
    problem: str  # "changed" | "missing" | "extra"
    expected: str = ""
    found: str = ""

    def __str__(self) -> str:
        if self.problem == "missing":
            return f"{self.path} is missing"
        if self.problem == "extra":
            return f"{self.path} is not in the manifest"
        return f"{self.path} does not match the manifest (expected {self.expected}, found {self.found})"


class VerificationFailed(Exception):
    """The folder does not match its manifest; the message names the files, for a person."""

    def __init__(self, *, folder: str, mismatches: list[Mismatch]):
        super().__init__(folder, mismatches)
        self.folder = folder
        self.mismatches = mismatches

    def __str__(self) -> str:
        shown = "; ".join(str(m) for m in self.mismatches[:5])
        more = f" (and {len(self.mismatches) - 5} more)" if len(self.mismatches) > 5 else ""
        return f"model files in {self.folder} fail verification: {shown}{more}"


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, absolute path) of every file below ``folder``, dot-names skipped."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.is_file():
                yield path.relative_to(folder).as_posix(), path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DigestCache:
    """File digests remembered across runs on one node (a JSON file), keyed by what a write changes.

    Thread- and process-safe enough for agents on one machine: reads and writes take an exclusive
    ``flock`` on a lock file next to it and replace the JSON atomically.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._pending: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[str, dict[str, int]]:
        real = os.path.realpath(path)
        st = os.stat(real)
        return real, {
            "dev": st.st_dev,
            "ino": st.st_ino,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
        }

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def digest(self, path: Path) -> str:
        real, stamp = self._stamp(path)
        with self._locked():
            known = self._load().get(real)
        if isinstance(known, dict) and {k: known.get(k) for k in stamp} == stamp and known.get("sha256"):
            self.hits += 1
            return str(known["sha256"])
        self.misses += 1
        started = time.time_ns()
        value = sha256_file(Path(real))
        _, after = self._stamp(path)
        racy = max(after["mtime_ns"], after["ctime_ns"]) > started - int(RACY_SECONDS * 1e9)
        if after == stamp and not racy:
            self._pending[real] = {**stamp, "sha256": value}
        return value

    def flush(self) -> None:
        """Write what this run hashed; entries of files that no longer exist are dropped."""
        if not self._pending:
            return
        with self._locked():
            data = self._load()
            data.update(self._pending)
            data = {k: v for k, v in data.items() if os.path.exists(k)}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, separators=(",", ":"))
            os.replace(tmp, self.path)
        self._pending.clear()


def _digest(path: Path, cache: DigestCache | None) -> str:
    return cache.digest(path) if cache is not None else sha256_file(path)


def manifest_for_folder(
    path: str | os.PathLike[str], *, source: str = "", revision: str = "", cache: DigestCache | None = None
) -> Manifest:
    """The manifest of ``path`` as it is now (``source`` defaults to the folder's absolute path)."""
    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = tuple(
        FileEntry(path=rel, size=abs_path.stat().st_size, sha256=_digest(abs_path, cache))
        for rel, abs_path in _walk(folder)
    )
    if cache is not None:
        cache.flush()
    return Manifest(files=files, source=source or str(folder), revision=revision)


def verify_folder(
    path: str | os.PathLike[str], manifest: Manifest, *, cache: DigestCache | None = None
) -> list[Mismatch]:
    """Every difference between ``path`` and ``manifest``; empty when the folder matches."""
    folder = Path(path).expanduser().absolute()
    if not folder.is_dir():
        return [Mismatch(path=str(folder), problem="missing")]
    expected = {f.path: f for f in manifest.files}
    present = dict(_walk(folder))
    mismatches: list[Mismatch] = []
    for rel, entry in sorted(expected.items()):
        abs_path = present.get(rel)
        if abs_path is None:
            mismatches.append(Mismatch(path=rel, problem="missing"))
            continue
        size = abs_path.stat().st_size
        if size != entry.size:
            mismatches.append(
                Mismatch(path=rel, problem="changed", expected=f"{entry.size} bytes", found=f"{size} bytes")
            )
            continue
        found = _digest(abs_path, cache)
        if found != entry.sha256:
            mismatches.append(
                Mismatch(
                    path=rel,
                    problem="changed",
                    expected=f"sha256 {entry.sha256[:16]}…",
                    found=f"{found[:16]}…",
                )
            )
    mismatches += [Mismatch(path=rel, problem="extra") for rel in sorted(set(present) - set(expected))]
    if cache is not None:
        cache.flush()
    return mismatches


def check_folder(
    path: str | os.PathLike[str], manifest: Manifest, *, cache: DigestCache | None = None
) -> None:
    """``verify_folder`` that raises ``VerificationFailed`` naming the files that differ."""
    mismatches = verify_folder(path, manifest, cache=cache)
    if mismatches:
        raise VerificationFailed(folder=str(path), mismatches=mismatches)
