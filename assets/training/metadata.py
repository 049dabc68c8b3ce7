"""What a checkpoint asset reports: the trainer's own metadata, a table of the streamed
metrics, the loss and multiplier plots, the samples it trained on, and the check that
the final losses are finite."""

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from assets.metadata import markdown_table, parquet_output_metadata
from models.metrics_plots import png_markdown

#: Rows of the metrics table in the asset's metadata.
TABLE_ROWS = 12


def _image_md(path: Any, alt: str) -> dg.MetadataValue:

    file = Path(str(path))
    if not file.is_file():
        return dg.MetadataValue.md(f"*{html.escape(alt)}: no plot was written*")
    return dg.MetadataValue.md(png_markdown(file, alt))


def metrics_table(records: Sequence[Mapping[str, Any]], rows: int = TABLE_ROWS) -> str:
    """Markdown table of about ``rows`` evenly spaced metric records (first and last kept)."""
    if not records:
        return "no metrics were reported"
    stride = max(1, math.ceil(len(records) / rows))
    picked = list(records[::stride])
    if picked[-1] is not records[-1]:
        picked.append(records[-1])
    lambdas = sorted({k for r in records for k in r if k.startswith("lambda_")})
    columns = ["step", "lr", "loss_fm", "loss_scene", "loss_degradation", "loss_plan", *lambdas]
    rows = [
        [
            f"{value:.4g}" if isinstance(value, float) else str(value)
            for value in (record.get(column, "") for column in columns)
        ]
        for record in picked
    ]
    return markdown_table(columns, rows, right_aligned=range(len(columns)))


def _value(metadata: Mapping[str, Any], key: str) -> Any:
    item = metadata.get(key)
    return getattr(item, "value", item)


def checkpoint_result(
    invocation: dg.PipesClientCompletedInvocation,
    facts: dict[str, Any],
    trained_on: Any,
) -> dg.MaterializeResult:
    """What the trainer reported, with its metrics table and plots, the run's ``facts`` and
    the samples it trained on; the check that the final losses are finite."""
    reported = invocation.get_materialize_result()
    metadata: dict[str, Any] = dict(reported.metadata or {})
    records = [
        message
        for message in invocation.get_custom_messages()
        if isinstance(message, dict) and message.get("kind") == "metrics"
    ]
    metadata["metrics"] = dg.MetadataValue.md(metrics_table(records))
    metadata["metric_records_streamed"] = len(records)
    metadata["restoration_loss_plot"] = _image_md(
        _value(metadata, "plot_loss"), "restoration (flow-matching) loss over training"
    )
    metadata["multipliers_plot"] = _image_md(
        _value(metadata, "plot_multipliers"), "Lagrange multipliers over training"
    )
    metadata.update(facts)
    metadata.update(parquet_output_metadata(trained_on.schema, trained_on.num_rows))
    metadata["samples_trained_on"] = trained_on.num_rows
    finals = {key: _value(metadata, key) for key in metadata if key.startswith("final_loss")}
    finite = bool(finals) and all(
        isinstance(v, int | float) and math.isfinite(v) for v in finals.values()
    )
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="losses_are_finite",
                passed=finite,
                metadata={"final_losses": dg.MetadataValue.json(finals)},
            )
        ],
    )
