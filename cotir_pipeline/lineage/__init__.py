"""``sample_lineage``: one queryable index over every stage's per-sample rows.

- :func:`build_lineage` joins the rows each stage wrote (raw pair plan, pair
  manifest, annotations, filter decisions, training shards and runs, bench sets,
  evaluation rows) into one row per sample, stored as sorted, bucketed Parquet
  under ``sample_lineage/`` in the object store; :func:`build_lineage_from_store`
  finds those rows in the store first.
- :func:`lookup` returns a sample's chain from source file to evaluation rows;
  :func:`query` lists samples matching a filter such as
  ``source = 'GoPro' and status = 'dropped'`` (a small safe language, see
  :mod:`cotir_pipeline.lineage.where`).

Names load on first use (PEP 562), so ``cotir lineage ID`` imports only the reader
(pyarrow and pyarrow.parquet), not pyarrow.compute, which only builds and filters need.
See docs/LINEAGE.md for the schema, the layout and the measured performance.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cotir_pipeline.lineage.build import (
        DEFAULT_ROW_GROUP_SIZE,
        STAGE_LOCATIONS,
        LineageInputError,
        LineageReport,
        build_lineage,
        build_lineage_from_store,
        discover_stage_inputs,
        read_stage_rows,
        report_json,
    )
    from cotir_pipeline.lineage.read import (
        LineageIndex,
        LineageIndexError,
        LineageIndexMissingError,
        LineageRecord,
        LineageStep,
        QueryResult,
        lookup,
        open_lineage,
        query,
        record_from_row,
    )
    from cotir_pipeline.lineage.schema import (
        LINEAGE_SCHEMA,
        LINEAGE_SCHEMA_VERSION,
        STAGE_NAMES,
        STAGES,
        StageSpec,
    )
    from cotir_pipeline.lineage.where import Where, WhereError, parse_where

_MODULE_OF = {
    **dict.fromkeys(
        (
            "DEFAULT_ROW_GROUP_SIZE",
            "STAGE_LOCATIONS",
            "LineageInputError",
            "LineageReport",
            "build_lineage",
            "build_lineage_from_store",
            "discover_stage_inputs",
            "read_stage_rows",
            "report_json",
        ),
        "build",
    ),
    **dict.fromkeys(
        (
            "LineageIndex",
            "LineageIndexError",
            "LineageIndexMissingError",
            "LineageRecord",
            "LineageStep",
            "QueryResult",
            "lookup",
            "open_lineage",
            "query",
            "record_from_row",
        ),
        "read",
    ),
    **dict.fromkeys(
        ("LINEAGE_SCHEMA", "LINEAGE_SCHEMA_VERSION", "STAGE_NAMES", "STAGES", "StageSpec"),
        "schema",
    ),
    **dict.fromkeys(("Where", "WhereError", "parse_where"), "where"),
}

__all__ = [
    "DEFAULT_ROW_GROUP_SIZE",
    "LINEAGE_SCHEMA",
    "LINEAGE_SCHEMA_VERSION",
    "STAGES",
    "STAGE_LOCATIONS",
    "STAGE_NAMES",
    "LineageIndex",
    "LineageIndexError",
    "LineageIndexMissingError",
    "LineageInputError",
    "LineageRecord",
    "LineageReport",
    "LineageStep",
    "QueryResult",
    "StageSpec",
    "Where",
    "WhereError",
    "build_lineage",
    "build_lineage_from_store",
    "discover_stage_inputs",
    "lookup",
    "open_lineage",
    "parse_where",
    "query",
    "read_stage_rows",
    "record_from_row",
    "report_json",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
