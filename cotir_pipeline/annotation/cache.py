"""Persistent request cache: one SQLite row per (sample id, template version, model).

Why SQLite (stdlib ``sqlite3``) rather than a JSONL or Parquet file:

- every finished request is committed on its own, atomically: a crash or a
  cancelled run loses at most the requests that were in flight, and never leaves
  a torn last line to repair (JSONL) or an unreadable file without its footer
  (Parquet, which cannot be appended to at all);
- the resume check is a primary-key look-up, not a scan of 5.2 M rows, and the
  key is exactly the cache key (the sample id is a content hash of the images and
  the recipe, so it stands for the request's inputs);
- WAL mode lets several processes (one per partition) share the file, with a busy
  timeout instead of errors. It must live on a local disk (not NFS, not S3): the
  stage keeps it in the settings' cache folder and publishes its per-sample rows
  to the store as Parquet.

Only ``ok`` rows are cache hits by default: a re-run redoes failures (docs/ARCHITECTURE.md),
while the failure rows stay in the file for inspection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from cotir_pipeline.annotation.base import AnnotationResult
from cotir_pipeline.shards import STATUS_OK

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    sample_id TEXT NOT NULL,
    template_version TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    row_json TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (sample_id, template_version, model)
) WITHOUT ROWID
"""

#: SQLite's default limit on host parameters is 999 in old builds; stay below it.
_CHUNK = 500


class AnnotationCache:
    """The cache file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            self._connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: committed rows survive a process crash; a power loss
            # may drop the last commits but never corrupts the file.
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(_SCHEMA)
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise ValueError(f"{self.path} is not a usable annotation cache: {error}") from None

    def __enter__(self) -> AnnotationCache:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._connection.close()

    def put(self, result: AnnotationResult) -> None:
        """Store (or replace) one final result; committed before returning."""
        row = result.to_row()
        row["cached"] = False
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO annotations VALUES (?, ?, ?, ?, ?, ?)",
                (
                    result.sample_id,
                    result.template_version,
                    result.model,
                    result.status,
                    json.dumps(row, sort_keys=True),
                    time.time(),
                ),
            )

    def get_many(
        self,
        sample_ids: Iterable[str],
        template_version: str,
        model: str,
        *,
        include_failed: bool = False,
    ) -> dict[str, AnnotationResult]:
        """Stored results for these ids (``cached=True``); only ``ok`` ones unless asked."""
        ids = list(dict.fromkeys(sample_ids))
        found: dict[str, AnnotationResult] = {}
        with self._lock:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                query = (
                    "SELECT sample_id, status, row_json FROM annotations "
                    f"WHERE template_version = ? AND model = ? AND sample_id IN ({marks})"
                )
                for sample_id, status, row_json in self._connection.execute(
                    query, (template_version, model, *chunk)
                ):
                    if status != STATUS_OK and not include_failed:
                        continue
                    row = json.loads(row_json)
                    row["cached"] = True
                    found[sample_id] = AnnotationResult.from_row(row)
        return found

    def count(
        self, template_version: str | None = None, model: str | None = None
    ) -> dict[str, int]:
        """Rows per status, optionally for one template version and model."""
        clauses, values = [], []
        if template_version is not None:
            clauses.append("template_version = ?")
            values.append(template_version)
        if model is not None:
            clauses.append("model = ?")
            values.append(model)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._connection.execute(
                f"SELECT status, COUNT(*) FROM annotations {where} GROUP BY status", values
            ).fetchall()
        return {status: int(number) for status, number in rows}
