"""Object storage: one interface, a local-folder and an S3 implementation.

Use :func:`open_store` with a :class:`StoreConfig` (``StoreConfig.from_settings``) to get
the store the settings point at.
"""

from __future__ import annotations

from cotir_pipeline.scratch import remove_abandoned_scratch
from cotir_pipeline.store.base import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StoreError,
    StoreUnavailableError,
    validate_key,
)
from cotir_pipeline.store.config import StoreConfig, inherited_store_config
from cotir_pipeline.store.local import LocalObjectStore
from cotir_pipeline.store.location import StoreLocation, parse_store_url
from cotir_pipeline.store.s3 import S3ObjectStore

_MIB = 1024 * 1024
#: What the stages clear at the start of a run: a killed process's partial files at any
#: age (their owner tag says the process has ended), anything else left this long.
LEFTOVER_AGE_S = 24 * 3600


def remove_leftovers(store: ObjectStore, prefix: str) -> list[str]:
    """Clear what killed runs left for a partition before it runs again: the store's
    partial files and unfinished uploads under ``prefix`` (:meth:`ObjectStore.cleanup`)
    and the scratch folders of ended processes in TMPDIR; return what was removed."""

    removed = store.cleanup(prefix, older_than_s=LEFTOVER_AGE_S)
    return removed + [str(path) for path in remove_abandoned_scratch()]


__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "S3ObjectStore",
    "StoreConfig",
    "StoreError",
    "StoreLocation",
    "StoreUnavailableError",
    "inherited_store_config",
    "open_store",
    "parse_store_url",
    "remove_leftovers",
    "validate_key",
]


def open_store(config: StoreConfig) -> ObjectStore:
    """Build the store that ``config.url`` names; no network happens here."""
    location = parse_store_url(config.url)
    if location.kind == "file":
        assert location.path is not None
        return LocalObjectStore(location.path)
    assert location.bucket is not None
    return S3ObjectStore(
        location.bucket,
        location.prefix,
        endpoint_url=config.s3_endpoint_url,
        region=config.s3_region,
        addressing_style=config.s3_addressing_style,
        max_attempts=config.max_attempts,
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        retry_budget_s=config.retry_budget_s,
        multipart_threshold=config.multipart_threshold_mib * _MIB,
        multipart_part_size=config.multipart_part_mib * _MIB,
    )
