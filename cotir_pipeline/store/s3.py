"""Object store on any S3-compatible server (AWS S3, Ceph radosgw, MinIO, ...), via boto3.

Atomicity is S3's own: a PUT or a completed multipart upload makes the whole
object visible at once, and boto3's transfer manager aborts a failed multipart
upload, so a partial object is never listed. Transient errors (throttling,
5xx, dropped connections) are retried by botocore's "standard" retry mode with
exponential backoff and jitter; reads of a response body, which botocore does
not retry, are retried here with the same policy.
"""

from __future__ import annotations

import io
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cotir_pipeline.store.base import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    StoreUnavailableError,
    check_range,
    validate_key,
    validate_prefix,
)
from cotir_pipeline.store.local import write_atomically

if TYPE_CHECKING:
    from botocore.client import BaseClient

_T = TypeVar("_T")
_MIB = 1024 * 1024
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}
_DELETE_BATCH = 1000


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3ObjectStore(ObjectStore):
    """Objects under ``s3://bucket/prefix`` on the endpoint given (AWS when None)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "path",
        max_attempts: int = 6,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        multipart_threshold: int = 64 * _MIB,
        multipart_part_size: int = 16 * _MIB,
    ) -> None:
        if multipart_part_size < 5 * _MIB:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.addressing_style = addressing_style
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.multipart_threshold = multipart_threshold
        self.multipart_part_size = multipart_part_size
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client_instance: BaseClient | None = None

    # -- plumbing -----------------------------------------------------------------

    def _make_client(self, max_attempts: int, connect_timeout_s: float) -> BaseClient:
        import boto3
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # Newer botocore adds CRC checksums with aws-chunked bodies by default;
            # many S3-compatible servers reject them, so only send what S3 requires.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    @property
    def client(self) -> BaseClient:
        """The boto3 client, created on first use (no network at construction)."""
        if self._client_instance is None:
            self._client_instance = self._make_client(self.max_attempts, self.connect_timeout_s)
        return self._client_instance

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_part_size,
            use_threads=True,
            max_concurrency=4,
        )

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative_key(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _where(self) -> str:
        return self.endpoint_url or "AWS S3"

    def _translate(self, error: Exception, key: str | None = None) -> Exception:
        """Map botocore errors to the store's errors, naming the setting to fix."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StoreUnavailableError(
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: no usable S3 credentials for "
                f"{self.url} ({error})"
            )
        if isinstance(error, EndpointConnectionError):
            setting = "COTIR_S3_ENDPOINT_URL" if self.endpoint_url else "COTIR_STORE"
            return StoreUnavailableError(f"{setting}: cannot reach {self._where()} ({error})")
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and key is None):
                return StoreUnavailableError(
                    f"COTIR_STORE: bucket {self.bucket!r} does not exist on {self._where()}"
                )
            if code in _NOT_FOUND_CODES and key is not None:
                return ObjectNotFoundError(f"no object {key!r} in {self.url}")
            if code in _CREDENTIAL_CODES:
                return StoreUnavailableError(
                    f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: {self._where()} refused the "
                    f"credentials for {self.url} ({code})"
                )
            return StoreError(f"S3 request for {key or self.url!r} failed: {code or error}")
        return error

    def _call(self, operation: Callable[[], _T], key: str | None = None) -> _T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation()
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, key) from error

    def _read_with_retries(self, key: str, read: Callable[[], _T]) -> _T:
        """Run a body-reading operation, retrying dropped or truncated responses."""
        from botocore.exceptions import (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )

        transient = (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._call(read, key)
            except StoreError as error:
                if attempt == self.max_attempts or not isinstance(error.__cause__, transient):
                    raise
            # Full-jitter exponential backoff, as botocore's standard mode does.
            time.sleep(random.uniform(0, min(20.0, 0.5 * 2**attempt)))
        raise AssertionError("unreachable")

    # -- the ObjectStore contract -------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        full_key = self._full_key(key)
        if len(data) >= self.multipart_threshold:
            self._call(
                lambda: self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, full_key, Config=self._transfer_config()
                ),
                key,
            )
        else:
            self._call(
                lambda: self.client.put_object(Bucket=self.bucket, Key=full_key, Body=data), key
            )
        return ObjectInfo(key=key, size=len(data))

    def put_file(self, key: str, source: Path, *, move: bool = False) -> ObjectInfo:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"cannot store {key!r}: {source} is not a file")
        full_key = self._full_key(key)
        self._call(
            lambda: self.client.upload_file(
                str(source), self.bucket, full_key, Config=self._transfer_config()
            ),
            key,
        )
        size = source.stat().st_size
        if move:
            source.unlink()
        return ObjectInfo(key=key, size=size)

    def get_bytes(self, key: str) -> bytes:
        full_key = self._full_key(key)
        return self._read_with_retries(
            key,
            lambda: self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read(),
        )

    def get_range(self, key: str, start: int, length: int) -> bytes:
        check_range(start, length)
        full_key = self._full_key(key)
        if length == 0:
            self.head(key)
            return b""

        def read() -> bytes:
            response = self.client.get_object(
                Bucket=self.bucket, Key=full_key, Range=f"bytes={start}-{start + length - 1}"
            )
            return response["Body"].read()

        try:
            return self._read_with_retries(key, read)
        except StoreError as error:
            if _error_code(error.__cause__) == "InvalidRange":  # start past the end
                return b""
            raise

    def download_file(self, key: str, destination: Path) -> ObjectInfo:
        full_key = self._full_key(key)
        info = self.head(key)

        def fetch() -> None:
            write_atomically(
                Path(destination),
                lambda handle: self.client.download_fileobj(
                    self.bucket, full_key, handle, Config=self._transfer_config()
                ),
            )

        self._read_with_retries(key, fetch)
        return info

    def head(self, key: str) -> ObjectInfo:
        full_key = self._full_key(key)
        response = self._call(
            lambda: self.client.head_object(Bucket=self.bucket, Key=full_key), key
        )
        return ObjectInfo(key=key, size=int(response["ContentLength"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=full_prefix))
        # Page by page, so a listing of millions of keys never sits in memory at once.
        while (page := self._call(lambda: next(pages, None))) is not None:
            for item in page.get("Contents", []):
                yield ObjectInfo(key=self._relative_key(item["Key"]), size=int(item["Size"]))

    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        self._call(lambda: self.client.delete_object(Bucket=self.bucket, Key=full_key), key)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete the whole store: give a non-empty prefix")
        keys = [self._full_key(info.key) for info in self.list(prefix)]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + _DELETE_BATCH]]
            response = self._call(
                lambda batch=batch: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StoreError(
                    f"could not delete {len(response['Errors'])} objects under {prefix!r}, "
                    f"first {first.get('Key')!r}: {first.get('Code')}"
                )
        return len(keys)

    def check(self) -> None:
        # Few attempts and a short timeout: a wrong endpoint should fail in seconds.
        quick = self._make_client(max_attempts=2, connect_timeout_s=min(self.connect_timeout_s, 5))
        self._call(lambda: quick.head_bucket(Bucket=self.bucket))
        probe = self._full_key(f"_cotir_check-{uuid.uuid4().hex}")
        self._call(lambda: quick.put_object(Bucket=self.bucket, Key=probe, Body=b"ok"))
        self._call(lambda: quick.delete_object(Bucket=self.bucket, Key=probe))

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (local servers, tests, first setup)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if _error_code(error) not in ("404", "NoSuchBucket", "NotFound"):
                raise self._translate(error) from error
        except Exception as error:  # connection problems: name the setting
            raise self._translate(error) from error
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as error:
            if _error_code(error) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._translate(error) from error
