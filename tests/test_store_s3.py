"""S3-only behaviour, against the real radosgw the session fixture starts."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cotir_pipeline.devservices.radosgw import S3Endpoint
from cotir_pipeline.settings import load_settings
from cotir_pipeline.store import (
    S3ObjectStore,
    StoreConfig,
    StoreError,
    StoreUnavailableError,
    open_store,
)
from cotir_test_support import MIB, FaultInjectingProxy, free_port

pytestmark = pytest.mark.s3

StoreFactory = Callable[..., S3ObjectStore]


def test_large_upload_is_multipart(make_s3_store: StoreFactory, tmp_path: Path) -> None:
    store = make_s3_store(multipart_threshold=5 * MIB, multipart_part_size=5 * MIB)
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * (11 * MIB))
    store.put_file("big.bin", source)
    etag = store.client.head_object(Bucket=store.bucket, Key="runs/t1/big.bin")["ETag"]
    assert etag.strip('"').endswith("-3"), f"expected a 3-part upload, ETag {etag}"


def test_small_upload_is_a_single_put(make_s3_store: StoreFactory) -> None:
    store = make_s3_store(multipart_threshold=5 * MIB, multipart_part_size=5 * MIB)
    store.put_bytes("small.bin", b"y" * 1000)
    etag = store.client.head_object(Bucket=store.bucket, Key="runs/t1/small.bin")["ETag"]
    assert "-" not in etag


class _FailingReader(io.RawIOBase):
    """A file that breaks after ``limit`` bytes, like a source disk failing mid-upload."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        if self.position >= self.limit:
            raise OSError("simulated read failure")
        count = min(len(buffer), self.limit - self.position)
        buffer[:count] = b"z" * count
        self.position += count
        return count


def test_failed_multipart_upload_leaves_nothing_visible(make_s3_store: StoreFactory) -> None:
    store = make_s3_store(multipart_threshold=5 * MIB, multipart_part_size=5 * MIB)
    store.put_bytes("victim.bin", b"previous")
    with pytest.raises(OSError, match="simulated"):
        store.client.upload_fileobj(
            _FailingReader(12 * MIB),
            store.bucket,
            "runs/t1/victim.bin",
            Config=store._transfer_config(),
        )
    assert store.get_bytes("victim.bin") == b"previous"
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert uploads == [], "the failed multipart upload was not aborted"


def test_transient_errors_are_retried(
    s3_credentials: S3Endpoint, make_s3_store: StoreFactory
) -> None:
    seeded = make_s3_store()
    with FaultInjectingProxy(s3_credentials.endpoint_url, failures=3) as proxy:
        store = S3ObjectStore(
            seeded.bucket,
            "runs/t1",
            endpoint_url=proxy.url,
            region=s3_credentials.region,
            max_attempts=5,
        )
        store.put_bytes("retried.txt", b"made it")
        assert proxy.failed == 3
        assert store.get_bytes("retried.txt") == b"made it"
    assert seeded.get_bytes("retried.txt") == b"made it"


def test_retries_give_up_after_max_attempts(
    s3_credentials: S3Endpoint, make_s3_store: StoreFactory
) -> None:
    seeded = make_s3_store()
    with FaultInjectingProxy(s3_credentials.endpoint_url, failures=100) as proxy:
        store = S3ObjectStore(
            seeded.bucket, "runs/t1", endpoint_url=proxy.url, max_attempts=2, retry_budget_s=0
        )
        with pytest.raises(StoreError, match="SlowDown"):
            store.put_bytes("never.txt", b"x")
        assert proxy.failed == 2
    assert not seeded.exists("never.txt")


def test_prefixes_isolate_stores_in_one_bucket(
    s3_credentials: S3Endpoint, make_s3_store: StoreFactory
) -> None:
    first = make_s3_store()
    second = S3ObjectStore(first.bucket, "runs/t2", endpoint_url=s3_credentials.endpoint_url)
    first.put_bytes("same/key", b"first")
    second.put_bytes("same/key", b"second")
    assert first.get_bytes("same/key") == b"first"
    assert [info.key for info in second.list()] == ["same/key"]
    assert second.uri("same/key") == f"s3://{first.bucket}/runs/t2/same/key"


def test_open_store_from_settings(
    s3_credentials: S3Endpoint, make_s3_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = make_s3_store().bucket
    monkeypatch.setenv("COTIR_STORE", f"s3://{bucket}/from-settings/")
    monkeypatch.setenv("COTIR_S3_ENDPOINT_URL", s3_credentials.endpoint_url)
    store = open_store(StoreConfig.from_settings(load_settings()))
    store.check()
    store.put_text("hello.txt", "hi")
    assert store.url == f"s3://{bucket}/from-settings"
    assert isinstance(store, S3ObjectStore)
    assert store.client.get_object(Bucket=bucket, Key="from-settings/hello.txt")["Body"].read()


def test_missing_bucket_names_the_setting(s3_credentials: S3Endpoint) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:12]}"
    store = S3ObjectStore(bucket, endpoint_url=s3_credentials.endpoint_url)
    with pytest.raises(StoreUnavailableError, match=r"^COTIR_STORE: bucket 'absent-\w+' does not"):
        store.check()


def test_wrong_credentials_name_the_variables(
    s3_credentials: S3Endpoint, make_s3_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = make_s3_store().bucket
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3ObjectStore(bucket, endpoint_url=s3_credentials.endpoint_url)
    with pytest.raises(StoreUnavailableError, match=r"^AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"):
        store.check()


def test_unreachable_endpoint_fails_fast_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "any")
    store = S3ObjectStore("cotir", endpoint_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=r"^COTIR_S3_ENDPOINT_URL: cannot reach"):
        store.check()
    assert time.monotonic() - started < 30
