"""Model integrity: what a model folder held when it was registered, and whether it still does.

Django-free (the standard library only) so that the node agent, the control plane and a
Kubernetes init container run the very same check: ``integrity.manifest`` computes a manifest
(every file's relative path, size and sha256, the source and revision, and the digest of the
manifest's canonical JSON) and verifies a folder against one; ``python -m integrity`` is its
command line.
"""

from integrity.manifest import (
    DigestCache,
    FileEntry,
    Manifest,
    Mismatch,
    VerificationFailed,
    manifest_for_folder,
    verify_folder,
)

__all__ = [
    "DigestCache",
    "FileEntry",
    "Manifest",
    "Mismatch",
    "VerificationFailed",
    "manifest_for_folder",
    "verify_folder",
]
