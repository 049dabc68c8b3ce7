"""Files from an S3 prefix (boto3), through the shared layout."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cotir_pipeline.sources.fetch.base import (
    PARTIAL,
    FetchResult,
    SourceFetcher,
    safe_relative,
)
from cotir_pipeline.sources.spec import (
    S3Fetch,
)

# -- S3 ----------------------------------------------------------------------------------


class S3Fetcher(SourceFetcher):
    """Copies every object under an S3 prefix, skipping those already present with the same
    size; archives among them are extracted."""

    method = "s3"
    spec: S3Fetch

    def fetch(self) -> FetchResult:
        mirrored = self.mirror_files()
        if mirrored:
            return self.materialize(self.local_files(mirrored, from_mirror=True))
        bucket, prefix = _split_s3_url(self.spec.url)
        client = self._client()
        target = self.source_dir / "s3"
        entries: list[tuple[str, Path]] = []
        for key, size in self._list(client, bucket, prefix):
            relative = safe_relative(self.name, key[len(prefix) :])
            local = target.joinpath(*relative.split("/"))
            if not (local.is_file() and local.stat().st_size == size):
                self._download(client, bucket, key, local, size)
            entries.append((relative, local))
        if not entries:
            raise self.error(f"no objects under {self.spec.url}")
        return self.materialize(self.local_files(entries, from_mirror=False))

    def _client(self) -> Any:
        from cotir_pipeline.store.s3 import s3_client

        return s3_client(
            self.spec.endpoint_url,
            addressing_style="path" if self.spec.endpoint_url else "auto",
            anonymous=self.spec.anonymous,
            max_attempts=self.options.max_attempts,
            connect_timeout_s=self.options.timeout_s,
            read_timeout_s=self.options.timeout_s,
        )

    def _list(self, client: Any, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        paginator = client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=bucket, Prefix=prefix))
        while (page := self._call(lambda: next(pages, None))) is not None:
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # folder placeholders
                    yield item["Key"], int(item["Size"])

    def _download(self, client: Any, bucket: str, key: str, local: Path, size: int) -> None:
        from boto3.s3.transfer import TransferConfig

        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.with_name(f"{PARTIAL}{uuid.uuid4().hex}-{local.name}")
        done = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if self.progress is not None:
                self.progress(done, size)

        transfer = TransferConfig(multipart_threshold=64 * 1024**2, max_concurrency=4)
        try:
            self._call(
                lambda: client.download_file(
                    bucket, key, str(temporary), Callback=advance, Config=transfer
                ),
                key,
            )
            os.replace(temporary, local)
        finally:
            temporary.unlink(missing_ok=True)
        self.forget_digest(local)

    def _call(self, operation: Callable[[], Any], key: str | None = None) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = self.spec.endpoint_url or "AWS S3"
        what = f"s3://{_split_s3_url(self.spec.url)[0]}/{key}" if key else self.spec.url
        try:
            return operation()
        except NoCredentialsError:
            raise self.error(
                f"no S3 credentials for {what}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "or 'anonymous: true' in the catalog for a public bucket"
            ) from None
        except EndpointConnectionError as error:
            raise self.error(
                f"cannot reach {where} for {what} ({error}); {self.mirror_hint()}"
            ) from None
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "")) or str(error)
            raise self.error(f"S3 request for {what} on {where} failed: {code}") from None
        except BotoCoreError as error:
            raise self.error(f"S3 request for {what} on {where} failed: {error}") from None


def _split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b/``); the prefix ends with '/' unless empty."""
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""
