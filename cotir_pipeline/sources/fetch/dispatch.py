"""fetch_source: one adapter per fetch method, one process at a time per source."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cotir_pipeline.sources.fetch.base import (
    DEFAULT_MAX_EXTRACT_BYTES,
    FetchOptions,
    FetchResult,
    ProgressCallback,
    SourceFetcher,
    locked,
)
from cotir_pipeline.sources.fetch.http import HttpFetcher
from cotir_pipeline.sources.fetch.hub import HubFetcher
from cotir_pipeline.sources.fetch.manual import ManualMirrorFetcher
from cotir_pipeline.sources.fetch.s3 import S3Fetcher
from cotir_pipeline.sources.spec import (
    FetchSpec,
    HttpFetch,
    HubFetch,
    ManualFetch,
    S3Fetch,
)

_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{1,62}$")


def fetch_source(
    name: str,
    spec: FetchSpec,
    *,
    cache_dir: Path,
    mirror_dir: Path | None = None,
    max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
    progress: ProgressCallback | None = None,
    options: FetchOptions | None = None,
    layout_globs: Sequence[str] = (),
) -> FetchResult:
    """Bring source ``name`` to ``cache_dir/<name>/`` and return where its files are.

    A local copy under ``mirror_dir/<name>/`` is used instead of the network when it
    holds the expected files. ``layout_globs`` are the source's split globs (LQ and HQ):
    a manual mirror also hands over every file they match, not only the spot-checked
    ``expected_files``. ``progress(done_bytes, total_bytes_or_None)`` is called
    while each file downloads. ``max_extract_bytes`` bounds the expanded size of all
    the source's archives together. One process at a time works on a source (a lock
    file in its cache folder); others wait, then find the work done.
    """
    if not isinstance(name, str) or not _SOURCE_NAME.match(name):
        raise ValueError(f"source name {name!r} must match {_SOURCE_NAME.pattern}")
    fetcher_class = _FETCHERS.get(type(spec))
    if fetcher_class is None:
        raise TypeError(f"{name}: unknown fetch spec type {type(spec).__name__}")
    fetcher = fetcher_class(
        name,
        spec,
        cache_dir=Path(cache_dir),
        mirror_dir=Path(mirror_dir) if mirror_dir is not None else None,
        max_extract_bytes=max_extract_bytes,
        progress=progress,
        options=options or FetchOptions(),
    )
    fetcher.layout_globs = tuple(layout_globs)
    with locked(fetcher.source_dir):
        return fetcher.fetch()


_FETCHERS: dict[type, type[SourceFetcher]] = {
    HttpFetch: HttpFetcher,
    S3Fetch: S3Fetcher,
    HubFetch: HubFetcher,
    ManualFetch: ManualMirrorFetcher,
}
