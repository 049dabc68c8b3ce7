"""Object store on any S3-compatible server (AWS S3, Ceph radosgw, MinIO, ...), via boto3.

Atomicity is S3's own: a PUT or a completed multipart upload makes the whole
object visible at once, and boto3's transfer manager aborts a failed multipart
upload, so a partial object is never listed. Transient errors (throttling, 5xx,
refused or dropped connections, truncated bodies) are retried by botocore's
"standard" mode within one request, then here, whole operation by whole operation,
with jittered exponential backoff until ``retry_budget_s`` (COTIR_STORE_RETRY_BUDGET_S,
30 s by default) has passed since the operation began, so a store rides through a
short outage (a restarting gateway) instead of failing the step. A read timeout is not
retried: an endpoint that accepts connections and never answers is reported once, in
one line naming it and the timeout. A process killed during a multipart upload leaves
its parts on the server; :meth:`S3ObjectStore.cleanup` (``cotir store cleanup``) aborts
such uploads, and docs/RELIABILITY.md gives the bucket lifecycle rule that does it
server-side.
"""

from __future__ import annotations

import datetime
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
#: Error codes (or HTTP statuses) of a server that is busy or briefly failing.
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "500",
    "502",
    "503",
    "504",
}


def _root_cause(error: BaseException) -> BaseException:
    """The botocore error behind boto3's transfer wrappers (upload/download failures)."""
    seen = error
    while not _is_botocore(seen) and (seen.__cause__ or seen.__context__) is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    last = getattr(seen, "last_exception", None)  # boto3's RetriesExceededError
    return last if isinstance(last, BaseException) else seen


def _is_botocore(error: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(error, (BotoCoreError, ClientError))


def is_transient(error: BaseException) -> bool:
    """Whether retrying the operation later may succeed (not for read timeouts: a hung
    endpoint is reported, not waited on again)."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    cause = _root_cause(error)
    if isinstance(cause, ReadTimeoutError):
        return False
    if isinstance(
        cause,
        (BotoConnectionError, ConnectionClosedError, IncompleteReadError, ResponseStreamingError),
    ):
        return True
    if isinstance(cause, ClientError):
        status = str(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return _error_code(cause) in _TRANSIENT_CODES or status in _TRANSIENT_CODES
    return False


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def s3_client(
    endpoint_url: str | None,
    *,
    region: str | None = None,
    addressing_style: str = "path",
    anonymous: bool = False,
    max_attempts: int = 1,
    connect_timeout_s: float = 10.0,
    read_timeout_s: float = 120.0,
) -> BaseClient:
    """A boto3 S3 client as every part of the project makes it (the store, the fetcher).

    ``max_attempts`` is botocore's own retry count ("standard" mode). Newer botocore adds
    CRC checksums with aws-chunked bodies by default; many S3-compatible servers reject
    them, so the client only sends what S3 requires.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(
        region_name=region,
        signature_version=UNSIGNED if anonymous else "s3v4",
        s3={"addressing_style": addressing_style},
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


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
        retry_budget_s: float = 30.0,
        multipart_threshold: int = 64 * _MIB,
        multipart_part_size: int = 16 * _MIB,
    ) -> None:
        if multipart_part_size < 5 * _MIB:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        if retry_budget_s < 0:
            raise ValueError(f"retry_budget_s must be >= 0, got {retry_budget_s}")
        self.retry_budget_s = retry_budget_s
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

    def _make_client(self, connect_timeout_s: float) -> BaseClient:
        # One attempt per request: the retries happen in _call, where a time budget bounds
        # them and a read timeout is not multiplied by the attempts.
        return s3_client(
            self.endpoint_url,
            region=self.region,
            addressing_style=self.addressing_style,
            max_attempts=1,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=self.read_timeout_s,
        )

    @property
    def client(self) -> BaseClient:
        """The boto3 client, created on first use (no network at construction)."""
        if self._client_instance is None:
            self._client_instance = self._make_client(self.connect_timeout_s)
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
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StoreUnavailableError(
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY: no usable S3 credentials for "
                f"{self.url} ({error})"
            )
        error = _root_cause(error)  # type: ignore[assignment]
        setting = "COTIR_S3_ENDPOINT_URL" if self.endpoint_url else "COTIR_STORE"
        if isinstance(error, EndpointConnectionError):
            return StoreUnavailableError(f"{setting}: cannot reach {self._where()} ({error})")
        if isinstance(error, ReadTimeoutError):
            return StoreUnavailableError(
                f"{setting}: {self._where()} accepted the connection but did not answer "
                f"within {self.read_timeout_s:g} s (COTIR_STORE_READ_TIMEOUT_S) for "
                f"{key or self.url!r}"
            )
        if isinstance(error, ConnectTimeoutError):
            return StoreUnavailableError(
                f"{setting}: no connection to {self._where()} within "
                f"{self.connect_timeout_s:g} s (COTIR_STORE_CONNECT_TIMEOUT_S)"
            )
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
        if isinstance(error, BotoConnectionError | ConnectionClosedError):
            return StoreUnavailableError(
                f"{setting}: the connection to {self._where()} failed or was cut ({error})"
            )
        if isinstance(error, BotoCoreError):
            return StoreError(
                f"S3 request for {key or self.url!r} to {self._where()} failed: {error}"
            )
        return error

    def _call(
        self, operation: Callable[[], _T], key: str | None = None, *, patient: bool = True
    ) -> _T:
        """Run one store operation; retry it while its errors are transient, for at least
        ``max_attempts`` attempts and as long as the retry budget lasts (``patient=False``:
        two attempts, no budget, for checks that must answer fast); raise the store's own
        error, naming what to fix, otherwise."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        attempts, budget = (self.max_attempts, self.retry_budget_s) if patient else (2, 0.0)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except (BotoCoreError, ClientError, Boto3Error) as error:
                elapsed = time.monotonic() - started
                # Jittered exponential backoff (0.25 s doubling, at most 5 s); past the
                # attempts, only while the next attempt still starts within the budget.
                pause = random.uniform(0.5, 1.0) * min(5.0, 0.25 * 2 ** (attempt - 1))
                more = attempt < attempts or elapsed + pause <= budget
                if not is_transient(error) or not more:
                    translated = self._translate(error, key)
                    if is_transient(error) and isinstance(translated, StoreError):
                        translated = type(translated)(
                            f"{translated} (still failing after {attempt} attempts in "
                            f"{elapsed:.1f} s; COTIR_STORE_RETRY_BUDGET_S="
                            f"{self.retry_budget_s:g})"
                        )
                    raise translated from error
                time.sleep(pause)

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
        return self._call(
            lambda: self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"].read(), key
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
            return self._call(read, key)
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

        self._call(fetch, key)
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
        # Page by page, so a listing of millions of keys never sits in memory at once; each
        # page is its own request (with its continuation token), so a retried page never
        # restarts or truncates the listing.
        token: str | None = None
        while True:
            request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
            if token is not None:
                request["ContinuationToken"] = token
            page = self._call(lambda request=request: self.client.list_objects_v2(**request))
            for item in page.get("Contents", []):
                yield ObjectInfo(key=self._relative_key(item["Key"]), size=int(item["Size"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or token is None:
                return

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

    def cleanup(self, prefix: str = "", *, older_than_s: float, dry_run: bool = False) -> list[str]:
        """Abort the unfinished multipart uploads under ``prefix`` started more than
        ``older_than_s`` seconds ago (a writer killed mid-upload leaves its parts behind);
        return ``<key> (upload <id>, started <time>)`` for each."""

        validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_s)
        found: list[tuple[str, str, datetime.datetime]] = []
        markers: dict[str, str] = {}
        while True:
            request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix, **markers}
            page = self._call(lambda request=request: self.client.list_multipart_uploads(**request))
            for upload in page.get("Uploads", []):
                if upload["Initiated"] <= cutoff:
                    found.append((upload["Key"], upload["UploadId"], upload["Initiated"]))
            if not page.get("IsTruncated"):
                break
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }
        removed = []
        for full_key, upload_id, initiated in found:
            if not dry_run:
                abort = {"Bucket": self.bucket, "Key": full_key, "UploadId": upload_id}
                self._call(lambda abort=abort: self.client.abort_multipart_upload(**abort))
            removed.append(
                f"{self._relative_key(full_key)} (upload {upload_id}, started "
                f"{initiated.isoformat(timespec='seconds')})"
            )
        return removed

    def check(self) -> None:
        # Few attempts and a short timeout: a wrong endpoint should fail in seconds.
        quick = self._make_client(connect_timeout_s=min(self.connect_timeout_s, 5))
        self._call(lambda: quick.head_bucket(Bucket=self.bucket), patient=False)
        probe = self._full_key(f"_cotir_check-{uuid.uuid4().hex}")
        self._call(
            lambda: quick.put_object(Bucket=self.bucket, Key=probe, Body=b"ok"), patient=False
        )
        self._call(lambda: quick.delete_object(Bucket=self.bucket, Key=probe), patient=False)

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
