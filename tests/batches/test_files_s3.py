"""The files storage on S3: django-storages' backend against moto's S3 server on a local port.

Upload, read back and delete go through the real code (``batches.files`` and the internal views,
boto3 over HTTP to the server), configured the way a deployment is: ``BERTH_FILES_STORAGE=s3`` and
``BERTH_S3_*`` read by ``batches.storage.storage_settings``, credentials from the environment.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.storage import storages
from django.test import Client, override_settings

from batches import files, storage
from batches.models import File
from batches.storage import StorageConfigError, storage_settings
from tests.factories import TenantFactory

pytestmark = pytest.mark.django_db

BUCKET = "berth-files-test"
TOKEN = "s3-test-internal-token-" + "y" * 24
LINE = {"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "e", "input": "x"}}
CONTENT = (json.dumps(LINE) + "\n").encode()


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    from tests.gateway.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    environ = {
        "BERTH_FILES_STORAGE": "s3",
        "BERTH_S3_BUCKET": BUCKET,
        "BERTH_S3_ENDPOINT_URL": s3_server,
        "BERTH_S3_REGION": "us-east-1",
    }
    config = storage_settings(data_dir=Path("/nonexistent"), environ=environ)
    with override_settings(STORAGES={**settings.STORAGES, "berth_files": config}, INTERNAL_TOKEN=TOKEN):
        yield client


def test_upload_read_delete_on_s3(s3, django_capture_on_commit_callbacks):
    tenant = TenantFactory()
    file = files.upload_file(
        tenant=tenant, purpose="batch", content=io.BytesIO(CONTENT), size=len(CONTENT), filename="../in.jsonl"
    )
    assert type(storages["berth_files"]).__name__ == "S3Storage"
    key = f"files/{tenant.pk}/{file.id}"
    assert file.storage_name == f"{tenant.pk}/{file.id}"
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == CONTENT
    assert file.filename == ".._in.jsonl"  # the filename is only a label

    # Read back through the internal view as the gateway asks for it.
    web = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "HTTP_X_BERTH_TENANT": str(tenant.pk)}
    answer = web.get(f"/internal/v1/files/{file.id}/content", **headers)
    assert answer.status_code == 200
    assert b"".join(answer.streaming_content) == CONTENT
    with storage.open_file(file.storage_name) as handle:
        assert handle.read() == CONTENT

    with django_capture_on_commit_callbacks(execute=True):  # the bytes go once the row is committed
        assert web.delete(f"/internal/v1/files/{file.id}", **headers).json()["deleted"] is True
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key=key)
    assert File.objects.get(pk=file.id).deleted_at is not None


def test_upload_through_the_view_on_s3(s3):
    tenant = TenantFactory()
    web = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "HTTP_X_BERTH_TENANT": str(tenant.pk)}
    upload = io.BytesIO(CONTENT)
    upload.name = "in.jsonl"
    answer = web.post("/internal/v1/files", {"purpose": "batch", "file": upload}, **headers)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"files/{tenant.pk}/")
    assert [o["Key"] for o in listed["Contents"]] == [f"files/{tenant.pk}/{body['id']}"]


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [({"BERTH_FILES_STORAGE": "gcs"}, "must be one of"), ({"BERTH_FILES_STORAGE": "s3"}, "BERTH_S3_BUCKET")],
)
def test_bad_storage_settings_are_refused(environ, fragment):
    with pytest.raises(StorageConfigError, match=fragment):
        storage_settings(data_dir=Path("/tmp"), environ=environ)  # noqa: S108


def test_filesystem_is_the_default(tmp_path):
    config = storage_settings(data_dir=tmp_path, environ={})
    assert config["OPTIONS"]["location"] == str(tmp_path / "files")
