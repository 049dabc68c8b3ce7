"""Object storage: one interface, a local-folder and an S3 implementation.

Use :func:`open_store` to get the store the settings point at.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cotir_pipeline.store.base import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    StoreUnavailableError,
    validate_key,
)
from cotir_pipeline.store.local import LocalObjectStore
from cotir_pipeline.store.location import StoreLocation, parse_store_url
from cotir_pipeline.store.s3 import S3ObjectStore

if TYPE_CHECKING:
    from cotir_pipeline.settings import CotirSettings

_MIB = 1024 * 1024

__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3ObjectStore",
    "StoreError",
    "StoreLocation",
    "StoreUnavailableError",
    "open_store",
    "parse_store_url",
    "validate_key",
]


def open_store(settings: CotirSettings) -> ObjectStore:
    """Build the store that ``settings.store`` names; no network happens here."""
    location = parse_store_url(settings.store)
    if location.kind == "file":
        assert location.path is not None
        return LocalObjectStore(location.path)
    assert location.bucket is not None
    return S3ObjectStore(
        location.bucket,
        location.prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        max_attempts=settings.store_max_attempts,
        connect_timeout_s=settings.store_connect_timeout_s,
        read_timeout_s=settings.store_read_timeout_s,
        retry_budget_s=settings.store_retry_budget_s,
        multipart_threshold=settings.store_multipart_threshold_mib * _MIB,
        multipart_part_size=settings.store_multipart_part_mib * _MIB,
    )
