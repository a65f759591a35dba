"""How store failures read: a full store is 507 insufficient_storage, other failures 503."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError

from registry import errors
from registry.storage.local import _storage_error
from registry.storage.s3 import _translate


@pytest.mark.parametrize(("code", "expected"), [
    (errno.ENOSPC, errors.InsufficientStorage),
    (errno.EDQUOT, errors.InsufficientStorage),
    (errno.EFBIG, errors.InsufficientStorage),
    (errno.EIO, errors.StorageError),
    (errno.EACCES, errors.StorageError),
])
def test_local_store_errors(code, expected):
    exc = _storage_error("writing", OSError(code, "reason"))
    assert type(exc) is expected
    assert exc.detail == "local blob store: writing failed: reason"
    assert (exc.status_code, exc.code) == (
        (507, "insufficient_storage") if expected is errors.InsufficientStorage
        else (503, "storage_unavailable"))


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("XMinioStorageFull", 507, errors.InsufficientStorage),  # MinIO with full disks
    ("SomethingNew", 507, errors.InsufficientStorage),
    ("QuotaExceeded", 403, errors.InsufficientStorage),
    ("InternalError", 500, errors.StorageError),
    ("AccessDenied", 403, errors.StorageError),
])
def test_s3_errors(code, status, expected):
    exc = _translate(ClientError({"Error": {"Code": code, "Message": "it said so"},
                                  "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"),
                     "upload")
    assert type(exc) is expected
    assert str(exc.detail) == f"S3 upload failed: {code} it said so"
