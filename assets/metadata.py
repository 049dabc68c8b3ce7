"""Dagster's standard metadata for the project's Parquet outputs: column schema, row count.

With ``dagster/column_schema`` and ``dagster/row_count`` on a materialization, the UI's
asset page shows the output's columns (type, nullability, description) and its size.
"""

from typing import Any

import dagster as dg
import pyarrow as pa


def parquet_output_metadata(schema: pa.Schema, rows: int) -> dict[str, Any]:
    """The column schema of ``schema`` and the row count, under Dagster's standard keys."""
    columns = [
        dg.TableColumn(
            name=field.name,
            type=str(field.type),
            description=((field.metadata or {}).get(b"doc", b"").decode() or None),
            constraints=dg.TableColumnConstraints(nullable=field.nullable),
        )
        for field in schema
    ]
    return {
        "dagster/column_schema": dg.TableSchema(columns=columns),
        "dagster/row_count": rows,
    }
