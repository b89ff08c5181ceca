"""Where the bytes of the Files API live: Django's ``berth_files`` storage, filesystem or S3.

Everything else (the rows, the API, the runner) goes through the standard Storage API on
``storages["berth_files"]`` (``save``, ``open``, ``delete``, ``exists``, ``size``), so the backend
is a setting, not code:

* **filesystem** (default, ``BERTH_FILES_STORAGE=filesystem``): ``BERTH_DATA_DIR/files`` (or
  ``BERTH_FILES_DIR``). Fine for one machine; with several web and worker hosts it must be a
  shared volume, which is why production deployments use S3;
* **S3** (``BERTH_FILES_STORAGE=s3``): django-storages' S3 backend on any S3-compatible service
  (AWS S3, MinIO, Ceph RGW, R2). ``BERTH_S3_BUCKET`` (required), ``BERTH_S3_ENDPOINT_URL``
  (empty for AWS), ``BERTH_S3_REGION``, ``BERTH_S3_PREFIX`` (a folder inside the bucket,
  default ``files``). Credentials come the boto3 way (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance or pod role): Berth never reads them
  itself, so a Kubernetes service account with IRSA or a node role works unchanged. Objects are
  private (no ACL is set: the bucket's policy decides) and are served through the control plane,
  never by presigned URLs, so the bucket needs no public endpoint.

Names are ``<tenant id>/<file id>``: never the tenant's filename (which may contain anything),
and a tenant's objects share a prefix that an operator can list, copy or delete.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File as DjangoFile
from django.core.files.storage import Storage, storages

STORAGE_ALIAS = "berth_files"
BACKENDS = ("filesystem", "s3")


class StorageConfigError(ImproperlyConfigured):
    """A ``BERTH_FILES_STORAGE`` / ``BERTH_S3_*`` setting that cannot work."""


def storage_settings(*, data_dir: Path, environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``STORAGES["berth_files"]`` entry for this environment (read once by settings.py)."""
    kind = (environ.get("BERTH_FILES_STORAGE") or "filesystem").strip().lower()
    if kind not in BACKENDS:
        raise StorageConfigError(f"BERTH_FILES_STORAGE must be one of {', '.join(BACKENDS)}; got {kind!r}")
    if kind == "filesystem":
        location = environ.get("BERTH_FILES_DIR") or str(data_dir / "files")
        return {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {
                "location": location,
                "file_permissions_mode": 0o600,
                "directory_permissions_mode": 0o700,
            },
        }
    bucket = (environ.get("BERTH_S3_BUCKET") or "").strip()
    if not bucket:
        raise StorageConfigError("BERTH_FILES_STORAGE=s3 needs BERTH_S3_BUCKET")
    options: dict[str, Any] = {
        "bucket_name": bucket,
        "location": (environ.get("BERTH_S3_PREFIX") or "files").strip("/"),
        # Never rename on collision: names are unique ids, and a rename would need a listing.
        "file_overwrite": True,
        "default_acl": None,
        "querystring_auth": False,
    }
    if endpoint := (environ.get("BERTH_S3_ENDPOINT_URL") or "").strip():
        options["endpoint_url"] = endpoint
    if region := (environ.get("BERTH_S3_REGION") or "").strip():
        options["region_name"] = region
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


def files_storage() -> Storage:
    return storages[STORAGE_ALIAS]


def object_name(*, tenant_id: object, file_id: str) -> str:
    return f"{tenant_id}/{file_id}"


def save(*, tenant_id: object, file_id: str, content: IO[bytes]) -> str:
    """Store ``content`` as the tenant's file and return the storage name to keep on the row."""
    return files_storage().save(object_name(tenant_id=tenant_id, file_id=file_id), DjangoFile(content))


def open_file(name: str) -> IO[bytes]:
    return files_storage().open(name, "rb")


def delete(name: str) -> None:
    """Remove the bytes (a missing object is not an error: deleting twice must work)."""
    if name:
        files_storage().delete(name)
