"""Metadata helpers: Dagster's standard keys for Parquet outputs, and Markdown tables.

With ``dagster/column_schema`` and ``dagster/row_count`` on a materialization, the UI's
asset page shows the output's columns (type, nullability, description) and its size.
"""

from collections.abc import Iterable, Mapping, Sequence
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


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, right_aligned: Sequence[int] = ()
) -> str:
    """A Markdown table for the UI's metadata: cells are text with ``|`` escaped and line
    breaks flattened; the columns at ``right_aligned`` (counts, numbers) align right."""
    rule = ["---:" if index in right_aligned else "---" for index in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        cells = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def counts_table(title: str, counts: Mapping[str, int]) -> str:
    """``| <title> | samples |`` with one row per name, sorted by name."""
    return markdown_table((title, "samples"), sorted(counts.items()), right_aligned=(1,))
