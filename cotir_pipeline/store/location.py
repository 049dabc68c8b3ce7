"""Parse the one storage URL (``COTIR_STORE``) into a typed location."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

# S3's bucket naming rules (the subset every S3-compatible server accepts).
_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS_PATTERN = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class StoreLocation:
    """Where an object store lives: a local folder or an S3 bucket and key prefix."""

    kind: Literal["file", "s3"]
    url: str
    path: Path | None = None
    bucket: str | None = None
    prefix: str = ""


def _check_bucket(bucket: str) -> None:
    if not _BUCKET_PATTERN.match(bucket) or ".." in bucket or _IP_ADDRESS_PATTERN.match(bucket):
        raise ValueError(
            f"{bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lowercase letters, digits, '.', '-')"
        )


def parse_store_url(url: str) -> StoreLocation:
    """Parse ``file:///abs/path``, a plain local path, or ``s3://bucket[/prefix]``.

    Raises ValueError with a message that says what is wrong and what is accepted.
    """
    text = url.strip()
    if not text:
        raise ValueError("empty store URL (use file:///abs/path or s3://bucket/prefix)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "":
        path = Path(text).expanduser().resolve()
        return StoreLocation(kind="file", url=path.as_uri(), path=path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"file URL {text!r} names a host; use three slashes for an absolute path "
                "(file:///abs/path)"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"file URL {text!r} must not have a query or fragment")
        path_text = unquote(parts.path)
        if not path_text.startswith("/"):
            raise ValueError(f"file URL {text!r} must hold an absolute path")
        path = Path(path_text).resolve()
        return StoreLocation(kind="file", url=path.as_uri(), path=path)
    if scheme == "s3":
        bucket = parts.netloc
        if not bucket:
            raise ValueError(f"S3 URL {text!r} has no bucket (use s3://bucket/prefix)")
        if parts.query or parts.fragment:
            raise ValueError(f"S3 URL {text!r} must not have a query or fragment")
        _check_bucket(bucket)
        prefix = parts.path.strip("/")
        if any(segment in ("", ".", "..") for segment in prefix.split("/")) and prefix:
            raise ValueError(f"S3 URL {text!r} has an empty, '.' or '..' path segment")
        normalized = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return StoreLocation(kind="s3", url=normalized, bucket=bucket, prefix=prefix)
    raise ValueError(
        f"unsupported scheme {parts.scheme!r} in {text!r} "
        "(use file:///abs/path, a local path, or s3://bucket/prefix)"
    )
