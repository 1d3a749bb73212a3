"""How storage failures read: one line naming the variable that can fix them."""

from __future__ import annotations

from botocore.exceptions import EndpointConnectionError

from backupd.config import S3Config
from backupd.storage.s3 import explain


def config(**extra: str) -> S3Config:
    return S3Config.model_validate({"STORAGE_BUCKET_NAME": "bucket", **extra})


def test_an_unreachable_endpoint_names_the_variable_the_user_set() -> None:
    error = EndpointConnectionError(endpoint_url="http://minio.internal:9000/bucket")

    on_aws = explain(error, config(), "upload x")
    minio = config(STORAGE_ENDPOINT_URL="http://minio.internal:9000")
    elsewhere = explain(error, minio, "upload x")

    assert "STORAGE_ENDPOINT_URL" not in on_aws
    assert on_aws.startswith("upload x: cannot reach AWS S3 (")
    assert on_aws.endswith("check STORAGE_REGION)")
    assert elsewhere == "upload x: cannot reach http://minio.internal:9000 (STORAGE_ENDPOINT_URL)"
