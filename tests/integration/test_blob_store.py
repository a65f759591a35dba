"""One BlobStore suite run against both LocalBlobStore and S3BlobStore (moto over HTTP)."""

from __future__ import annotations

import hashlib
import random
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from registry.errors import (
    BlobNotFound,
    DigestMismatch,
    InvalidDigest,
    InvalidInput,
    StorageError,
    TooLarge,
)
from registry.storage import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    open_blob_store,
)
from tests.integration.s3_server import TEST_CREDENTIALS, s3_client, start_moto_server

MiB = 1024 * 1024
PART = 5 * MiB
BUCKET = "blob-store-tests"


def blob(size: int, seed: int = 0) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def write_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"src-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return path


def write_chunks(writer: Any, data: bytes, chunk: int = MiB) -> None:
    for i in range(0, len(data), chunk):
        writer.write(data[i : i + chunk])


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    endpoint, stop = start_moto_server()
    yield endpoint
    stop()


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    # Resolved lazily so a run filtered to the local case never starts moto.
    client = request.getfixturevalue("s3")
    return S3BlobStore(client, bucket=BUCKET, prefix=f"t-{uuid.uuid4().hex}", part_bytes=PART)


def leftovers(store: BlobStore) -> list[str]:
    """Whatever an unfinished upload could leave behind: temp files or multipart uploads."""
    if isinstance(store, LocalBlobStore):
        return sorted(p.name for p in store.tmp_dir.glob("*")) if store.tmp_dir.exists() else []
    assert isinstance(store, S3BlobStore)
    resp = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix + "/")
    return sorted(u["Key"] for u in resp.get("Uploads", []))


def committed(store: BlobStore) -> dict[str, int]:
    return {s.digest: s.size for s in store.iter_blobs()}


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 12 * MiB + 123], ids=["empty", "small", "multipart"])
def test_put_and_read_back(store: BlobStore, tmp_path: Path, size: int) -> None:
    data, digest = blob(size)
    assert store.put_file(digest, write_file(tmp_path, data)) == size
    chunks = list(store.iter_chunks(digest, chunk_size=MiB))
    assert all(len(c) <= MiB for c in chunks)
    assert b"".join(chunks) == data
    assert store.stat(digest).size == size
    assert committed(store) == {digest: size}
    assert leftovers(store) == []


def test_writer_round_trip_with_odd_writes(store: BlobStore) -> None:
    data, digest = blob(11 * MiB + 7, seed=1)
    with store.writer(digest, max_size=len(data)) as w:
        # Uneven writes that straddle part boundaries.
        write_chunks(w, data, chunk=3 * MiB + 1)
        assert w.commit() == len(data)
        assert w.commit() == len(data)  # committing twice is harmless
    assert b"".join(store.iter_chunks(digest)) == data


def test_exists_and_stat(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(4321)
    assert not store.exists(digest)
    with pytest.raises(BlobNotFound):
        store.stat(digest)
    before = datetime.now(UTC) - timedelta(seconds=5)
    store.put_file(digest, write_file(tmp_path, data))
    assert store.exists(digest)
    st = store.stat(digest)
    assert (st.digest, st.size) == (digest, len(data))
    assert st.modified.tzinfo is not None and st.modified.utcoffset() == timedelta(0)
    assert before <= st.modified <= datetime.now(UTC) + timedelta(seconds=5)


def test_layout(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(10)
    hexpart = digest.removeprefix("sha256:")
    store.put_file(digest, write_file(tmp_path, data))
    if isinstance(store, LocalBlobStore):
        path = store.root / "sha256" / hexpart[:2] / hexpart[2:4] / hexpart
        assert store.path_for(digest) == path
        assert path.read_bytes() == data
    else:
        assert isinstance(store, S3BlobStore)
        key = f"{store.prefix}/blobs/sha256/{hexpart}"
        assert store.key_for(digest) == key
        assert store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read() == data


# --- nothing unverified becomes visible ----------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "multipart"])
def test_digest_mismatch_leaves_nothing(store: BlobStore, tmp_path: Path, size: int) -> None:
    data, _ = blob(size)
    _, wrong = blob(size, seed=99)
    with pytest.raises(DigestMismatch):
        store.put_file(wrong, write_file(tmp_path, data))
    assert not store.exists(wrong)
    assert committed(store) == {}
    assert leftovers(store) == []


def test_mismatch_against_existing_blob_is_still_rejected(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(2000)
    store.put_file(digest, write_file(tmp_path, data))
    with pytest.raises(DigestMismatch):
        store.put_file(digest, write_file(tmp_path, b"something else"))
    assert b"".join(store.iter_chunks(digest)) == data
    assert leftovers(store) == []


def test_too_large_mid_stream_leaves_nothing(store: BlobStore) -> None:
    data, digest = blob(12 * MiB)
    w = store.writer(digest, max_size=7 * MiB)
    with pytest.raises(TooLarge):
        write_chunks(w, data)  # a 5 MiB part is already uploaded when the limit trips
    assert not store.exists(digest)
    assert leftovers(store) == []
    with pytest.raises(RuntimeError):
        w.write(b"x")
    w.abort()


def test_put_file_too_large(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(1000)
    with pytest.raises(TooLarge):
        store.put_file(digest, write_file(tmp_path, data), max_size=999)
    assert store.put_file(digest, write_file(tmp_path, data), max_size=1000) == 1000


def test_abort_leaves_nothing(store: BlobStore) -> None:
    data, digest = blob(6 * MiB)
    w = store.writer(digest)
    write_chunks(w, data)
    w.abort()
    w.abort()  # idempotent
    assert not store.exists(digest)
    assert leftovers(store) == []
    assert committed(store) == {}


def test_context_manager_aborts_on_exception_or_missing_commit(store: BlobStore) -> None:
    data, digest = blob(6 * MiB)
    with pytest.raises(KeyError), store.writer(digest) as w:
        write_chunks(w, data)
        raise KeyError("client went away")
    with store.writer(digest) as w:
        write_chunks(w, data)  # never committed
    assert not store.exists(digest)
    assert leftovers(store) == []


def test_cleanup_temp_removes_only_stale_uploads(store: BlobStore) -> None:
    data, digest = blob(6 * MiB)
    w = store.writer(digest)
    write_chunks(w, data)  # past one part, so S3 has a multipart upload in flight
    assert len(leftovers(store)) == 1
    if isinstance(store, LocalBlobStore):
        # moto reports every multipart upload as initiated in 2010, so only the local store
        # can show that a fresh upload survives.
        assert store.cleanup_temp(3600) == 0
        # A live upload holds its temp file's lock: even an age of 0 leaves it alone...
        assert store.cleanup_temp(0) == 0
        # ...until its process dies, which releases the lock (closing the descriptor does).
        w._file.close()
    else:
        store.upload_idle_seconds = 0
    assert store.cleanup_temp(0) == 1
    assert leftovers(store) == []
    w.abort()  # its upload is already gone; must not raise


def test_a_temp_file_not_yet_locked_survives_cleanup(tmp_path: Path) -> None:
    """A writer creates its temp file under a fresh name, locks it, then renames it: between
    the open and the lock, a cleanup with no grace used to remove it (the upload then failed
    to publish). A fresh-named file goes only once it is an hour old (its process died)."""
    import os
    import time

    from registry.storage.local import FRESH_GRACE_SECONDS, FRESH_SUFFIX

    store = LocalBlobStore(tmp_path / "store")
    data, digest = blob(1024)
    w = store.writer(digest)
    write_chunks(w, data)
    assert [p.suffix for p in store.tmp_dir.iterdir()] == [".tmp"]  # renamed once locked
    w.abort()
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    fresh = store.tmp_dir / f"upload.{uuid.uuid4().hex}{FRESH_SUFFIX}"
    fresh.write_bytes(b"x")  # as a writer leaves it between its open and its lock
    assert store.cleanup_temp(0) == 0 and fresh.exists()
    old = time.time() - FRESH_GRACE_SECONDS - 10
    os.utime(fresh, (old, old))  # its writer died in between, an hour ago
    assert store.cleanup_temp(0) == 1 and not fresh.exists()


# --- reads, deletes, listing ---------------------------------------------------------------------


def test_read_range(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(1000)
    store.put_file(digest, write_file(tmp_path, data))
    assert store.read_range(digest, 0, 10) == data[:10]
    assert store.read_range(digest, 500, 100) == data[500:600]
    assert store.read_range(digest, 990, 100) == data[990:]
    assert store.read_range(digest, 1000, 10) == b""
    assert store.read_range(digest, 5000, 1) == b""
    assert store.read_range(digest, 10, 0) == b""
    with pytest.raises(InvalidInput):
        store.read_range(digest, -1, 10)


def test_iter_chunks_bounded_and_closable(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(100_000)
    store.put_file(digest, write_file(tmp_path, data))
    chunks = list(store.iter_chunks(digest, chunk_size=4096))
    assert max(len(c) for c in chunks) <= 4096
    assert b"".join(chunks) == data
    it = store.iter_chunks(digest, chunk_size=10)
    assert next(it) == data[:10]
    it.close()  # type: ignore[attr-defined]
    assert list(it) == []


def test_delete(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(100)
    store.put_file(digest, write_file(tmp_path, data))
    store.delete(digest)
    assert not store.exists(digest)
    store.delete(digest)  # missing is fine
    assert committed(store) == {}


def test_iter_blobs_lists_exactly_the_committed(store: BlobStore, tmp_path: Path) -> None:
    expected = {}
    for seed in range(3):
        data, digest = blob(100 + seed, seed=seed)
        store.put_file(digest, write_file(tmp_path, data))
        expected[digest] = len(data)
    aborted_data, aborted = blob(50, seed=10)
    with store.writer(aborted) as w:
        w.write(aborted_data)
        w.abort()
    # Stray entries that are not blobs must be ignored.
    if isinstance(store, LocalBlobStore):
        (store.root / "sha256" / "zz").mkdir(parents=True)
        (store.root / "sha256" / "zz" / "junk").write_bytes(b"x")
    else:
        assert isinstance(store, S3BlobStore)
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/blobs/sha256/junk")
    assert committed(store) == expected


def test_second_put_is_idempotent(store: BlobStore, tmp_path: Path) -> None:
    data, digest = blob(3000)
    store.put_file(digest, write_file(tmp_path, data))
    first = store.stat(digest)
    assert store.put_file(digest, write_file(tmp_path, data)) == len(data)
    assert store.stat(digest) == first  # the existing blob was kept, not rewritten
    assert committed(store) == {digest: len(data)}
    assert leftovers(store) == []


BAD_DIGESTS = [
    "sha256:../../etc/passwd",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "md5:" + "a" * 32,
    "sha256:" + "a" * 62 + "/x",
    "",
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_invalid_digests_rejected(store: BlobStore, tmp_path: Path, bad: str) -> None:
    src = write_file(tmp_path, b"data")
    calls = [
        lambda: store.exists(bad),
        lambda: store.stat(bad),
        lambda: store.writer(bad),
        lambda: store.put_file(bad, src),
        lambda: store.iter_chunks(bad),
        lambda: store.read_range(bad, 0, 1),
        lambda: store.delete(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidDigest):
            call()
    assert committed(store) == {}
    assert leftovers(store) == []


def test_missing_blob(store: BlobStore) -> None:
    _, digest = blob(10, seed=123)
    with pytest.raises(BlobNotFound):
        store.stat(digest)
    with pytest.raises(BlobNotFound):
        store.iter_chunks(digest)
    with pytest.raises(BlobNotFound):
        store.read_range(digest, 0, 10)
    with pytest.raises(BlobNotFound):
        store.read_range(digest, 0, 0)


# --- readiness and failures ----------------------------------------------------------------------


def test_check_ok(store: BlobStore, tmp_path: Path) -> None:
    assert store.check() is None
    # The probe leaves nothing a listing, gc or an upload would see, and the store works.
    assert committed(store) == {} and leftovers(store) == []
    data, digest = blob(100, seed=3)
    store.put_file(digest, write_file(tmp_path, data))
    assert store.check() is None and committed(store) == {digest: 100}


def test_check_missing_bucket(s3: Any) -> None:
    store = S3BlobStore(s3, bucket="no-such-bucket-here", prefix="p")
    with pytest.raises(StorageError, match="does not exist"):
        store.check()


def test_s3_part_failing_in_the_background_aborts_the_upload(s3: Any, tmp_path: Path) -> None:
    """Parts upload on a background thread; one that fails (here: the multipart upload was
    aborted behind the writer's back, as a bucket lifecycle rule might) fails the commit."""
    store = S3BlobStore(s3, bucket=BUCKET, prefix=f"t-{uuid.uuid4().hex}", part_bytes=PART)
    data, digest = blob(3 * PART + 17, seed=9)
    writer = store.writer(digest)
    writer.write(data[:PART])  # part 1 starts uploading
    for upload in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=store.prefix + "/")["Uploads"]:
        s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    with pytest.raises(StorageError, match="upload failed"):
        writer.write(data[PART:])  # parts 2 and 3: part 2 meets the aborted upload
        writer.commit()
    assert not store.exists(digest)
    assert leftovers(store) == []
    # The store still works: the same blob uploads cleanly afterwards.
    assert store.put_file(digest, write_file(tmp_path, data)) == len(data)
    assert b"".join(store.iter_chunks(digest)) == data


def test_check_unwritable_local_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = LocalBlobStore(tmp_path / "file" / "blobs")  # a regular file is in the way
    with pytest.raises(StorageError, match="not writable"):
        store.check()


def test_unreachable_endpoint_is_a_storage_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nobody listens on the port now; one attempt, so the test does not wait for retries.
    client = s3_client(f"http://127.0.0.1:{port}", max_attempts=1)
    store = S3BlobStore(client, bucket=BUCKET)
    _, digest = blob(10)
    for call in (store.check, lambda: store.stat(digest), lambda: list(store.iter_blobs())):
        with pytest.raises(StorageError) as info:
            call()
        assert "\n" not in str(info.value)


# --- open_blob_store -----------------------------------------------------------------------------


def test_open_local_urls(tmp_path: Path) -> None:
    for url in (tmp_path.as_uri(), str(tmp_path), f"file://localhost{tmp_path}"):
        store = open_blob_store(url)
        assert isinstance(store, LocalBlobStore)
        assert store.root == tmp_path
    spaced = tmp_path / "with space"
    store = open_blob_store(spaced.as_uri())
    assert isinstance(store, LocalBlobStore) and store.root == spaced


@pytest.mark.parametrize(
    "url",
    [
        "",
        "relative/dir",
        "file://otherhost/dir",
        "file:relative",
        "s3://",
        "ftp://x/y",
        "http://bucket/x",
        "s3://bucket/p?x=1",
    ],
)
def test_open_rejects(url: str) -> None:
    with pytest.raises(InvalidInput):
        open_blob_store(url)


def test_open_s3_uses_env_endpoint(
    moto_endpoint: str, s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_CREDENTIALS["region_name"])
    prefix = f"env-{uuid.uuid4().hex}"
    store = open_blob_store(f"s3://{BUCKET}/{prefix}/", part_bytes=6 * MiB)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.part_bytes) == (BUCKET, prefix, 6 * MiB)
    assert store.url == f"s3://{BUCKET}/{prefix}"
    assert store.client.meta.endpoint_url == moto_endpoint
    store.check()
    data, digest = blob(500)
    store.put_file(digest, write_file(tmp_path, data))
    assert s3.head_object(Bucket=BUCKET, Key=store.key_for(digest))["ContentLength"] == 500
    with pytest.raises(InvalidInput):
        open_blob_store(f"s3://{BUCKET}", part_bytes=MiB)


# --- uploads named by their content -------------------------------------------------------------


def test_new_blob_writer_names_the_blob_after_its_content(store: BlobStore,
                                                         request: pytest.FixtureRequest) -> None:
    data, digest = blob(3 * MiB + 5, seed=41)
    # Expected from the backend under test, not from the store's own flag: S3 keys objects by
    # digest from the first part, so only the local store can name a blob after its upload.
    local = request.node.callspec.params["store"] == "local"
    assert store.digest_after_upload is local
    if not local:
        with pytest.raises(InvalidInput, match="digest before its upload"):
            store.new_blob_writer()
        return
    writer = store.new_blob_writer(max_size=4 * MiB)
    assert writer.digest is None
    write_chunks(writer, data, chunk=300_001)
    assert not store.exists(digest)  # nothing visible before commit
    assert writer.commit() == len(data)
    assert writer.digest == digest
    assert b"".join(store.iter_chunks(digest)) == data
    # The same content again: one blob, the same name.
    again = store.new_blob_writer()
    write_chunks(again, data)
    again.commit()
    assert again.digest == digest
    assert [b.digest for b in store.iter_blobs()] == [digest]


def test_new_blob_writer_over_the_limit_or_aborted_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")  # S3 refuses these uploads (tested above)
    data, _ = blob(2 * MiB, seed=42)
    writer = store.new_blob_writer(max_size=MiB)
    with pytest.raises(TooLarge, match="upload exceeds the limit"):
        write_chunks(writer, data, chunk=256 * 1024)
    with store.new_blob_writer() as aborted:
        aborted.write(data)  # leaves the block without commit: aborted
    assert list(store.iter_blobs()) == []
    assert leftovers(store) == []
