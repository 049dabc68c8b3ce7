"""Fetch one catalog source onto local disk: download, verify, extract.

:func:`.dispatch.fetch_source` picks one adapter per fetch method (:class:`HttpFetcher`,
:class:`S3Fetcher`, :class:`HubFetcher`, :class:`ManualMirrorFetcher`). Each
brings the source's files to local disk, from a local mirror first when one
holds them, and :class:`SourceFetcher` then lays them out the same way for all
methods, under ``<cache_dir>/<name>/``::

    downloads/<file>          HTTP downloads, renamed into place only once verified
    downloads/<file>.part     an interrupted download, resumed with a Range request
    downloads/<file>.bad      a download that failed its checksum (never used)
    s3/<key>, hub/<path>      copies from an S3 prefix or a hub repository
    state/<id>.json           small records of file digests (a re-run hashes nothing)
    extracted/                the root the pairing rules glob under:
        <archive stem>/...    each archive, extracted safely and atomically
        <path>                each plain (non-archive) file, hard-linked or copied

Every error is a :class:`FetchError` whose message starts with the source name.
A fetch of a finished source does no network I/O: files are checked against the
digest records, and extractions against their completion markers.

Modules: :mod:`.base` (errors, results, options, the shared :class:`SourceFetcher`),
:mod:`.http`, :mod:`.s3`, :mod:`.hub` and :mod:`.manual` (one adapter each) and
:mod:`.dispatch` (:func:`fetch_source`, which picks the adapter).
"""
