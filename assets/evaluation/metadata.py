"""What the evaluation assets report in the UI: tables, previews, check results."""

import base64
import io
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from assets.evaluation.resource import RESTORED_CHECK, SCORED_CHECK, TABLED_CHECK
from assets.metadata import markdown_table, parquet_output_metadata
from cotir_pipeline.evaluation.bench_sets import bench_lineage_schema, unknown_labels
from cotir_pipeline.evaluation.method_runs import RestorationResult, ScoringResult
from cotir_pipeline.evaluation.reporting import TablesResult
from cotir_pipeline.evaluation.scoring import restoration_row_schema, score_row_schema
from cotir_pipeline.evaluation.stage import RESTORATION_ROWS, BenchSpec


def _png_md(png: bytes, caption: str) -> dg.MetadataValue:
    encoded = base64.b64encode(png).decode("ascii")
    return dg.MetadataValue.md(f"{caption}\n\n![{caption}](data:image/png;base64,{encoded})")


def _image_md(path: Path, caption: str, *, max_width: int) -> dg.MetadataValue:
    """An image inline in Markdown metadata, scaled down to ``max_width`` pixels so it fits
    the UI's metadata dialog (the stored file keeps its full size), as JPEG to keep the
    event log small."""

    with Image.open(path) as image:
        picture = image.convert("RGB")
    if picture.width > max_width:
        height = round(picture.height * max_width / picture.width)
        picture = picture.resize((max_width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=88)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return dg.MetadataValue.md(
        f"{caption} ({path.name}; full size in the store)\n\n"
        f"![{caption}](data:image/jpeg;base64,{encoded})"
    )


def bench_sets_metadata(
    status: dict[str, dict[str, Any]], subset_rows: list[tuple[str, str, int]], uri: str
) -> dict[str, Any]:
    totals = Counter[str]()
    for entry in status.values():
        totals.update({k: entry.get(k, 0) for k in ("uploaded", "unchanged", "deleted")})
    metadata: dict[str, Any] = {
        "sets": dg.MetadataValue.md(
            markdown_table(
                ("set", "status", "samples", "uploaded", "unchanged", "n/a reason"),
                (
                    (
                        name,
                        s["status"],
                        s.get("samples", ""),
                        s.get("uploaded", ""),
                        s.get("unchanged", ""),
                        s.get("reason", ""),
                    )
                    for name, s in status.items()
                ),
            )
        ),
        "by_subset": dg.MetadataValue.md(
            markdown_table(("set", "subset", "samples"), subset_rows) if subset_rows else "none"
        ),
        "objects_uploaded": totals["uploaded"],
        "objects_unchanged": totals["unchanged"],
        "objects_deleted": totals["deleted"],
        "uri": dg.MetadataValue.url(uri),
    }
    for name, entry in status.items():
        metadata[f"samples/{name}"] = entry.get("samples", 0)
    # The per-sample lineage manifests (one per built set): columns and total rows.
    metadata.update(
        parquet_output_metadata(
            bench_lineage_schema(), sum(entry.get("samples", 0) for entry in status.values())
        )
    )
    return metadata


def restorations_result(result: RestorationResult, bench: Any, uri: str) -> dg.MaterializeResult:
    run, failures = result.run, result.failures
    metadata: dict[str, Any] = {
        "restorer_version": run.version,
        "samples": result.samples,
        # Labels of foreign sets that no known spelling matches: once per label, counted.
        "unknown_degradation_labels": dg.MetadataValue.json(unknown_labels(bench.records)),
        "objects_uploaded": result.upload.uploaded,
        "failures": dg.MetadataValue.md(
            markdown_table(("prompt", "sample", "reason"), failures[:20]) if failures else "none"
        ),
        "uri": dg.MetadataValue.url(uri),
    }
    for kind, summary in result.summaries.items():
        metadata[f"written/{kind}"] = summary.written
        metadata[f"skipped/{kind}"] = summary.skipped
        metadata[f"failed/{kind}"] = len(summary.failed)
    if run.checkpoint_hash:
        metadata["checkpoint_hash"] = run.checkpoint_hash
    metadata["sample_rows"] = dg.MetadataValue.url(f"{uri}/{RESTORATION_ROWS}")
    metadata.update(parquet_output_metadata(restoration_row_schema(), result.sample_rows))
    metadata["preview"] = _png_md(result.preview, "LQ | vague | precise | HQ")
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=RESTORED_CHECK,
                passed=not failures,
                metadata={"failed": len(failures), "samples": result.samples},
            )
        ],
    )


def scores_result(result: ScoringResult, spec: BenchSpec, uri: str) -> dg.MaterializeResult:
    metadata: dict[str, Any] = {
        "metric_set": spec.metric_set,
        "device": result.device,
        "rows": len(result.rows),
        "means": dg.MetadataValue.md(
            markdown_table(
                ("metric", "prompt", "mean", "images", "n/a reason"),
                (
                    (m, k, "n/a" if v is None else f"{v:.4f}", n, why)
                    for m, k, v, n, why in result.summary
                ),
            )
        ),
        "uri": dg.MetadataValue.url(uri),
    }
    not_available = {}
    for metric, kind, value, _, why in result.summary:
        if value is None:
            not_available[f"{metric}/{kind}"] = why
        else:
            metadata[f"{metric}/{kind}"] = dg.MetadataValue.float(value)
    metadata["not_available"] = dg.MetadataValue.json(not_available)
    if result.runtimes:
        metadata["seconds_per_image"] = dg.MetadataValue.float(
            sum(r.seconds for r in result.runtimes) / len(result.runtimes)
        )
    metadata.update(parquet_output_metadata(score_row_schema(), len(result.rows)))
    check = result.check
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name=SCORED_CHECK,
                passed=check.passed,
                metadata={
                    "missing_rows": check.missing_rows,
                    "missing_example": check.missing_example,
                    "values_without_reason": check.values_without_reason,
                },
            )
        ],
    )


def tables_result(result: TablesResult, uri: str) -> dg.MaterializeResult:
    charts, out = result.charts, result.out
    metadata: dict[str, Any] = {
        # Every table, chart and grid is viewable on the asset page, not only by name.
        **{f"table_{k.lower()}": dg.MetadataValue.md(text) for k, text in result.markdown.items()},
        **{
            f"chart_{key.lower()}": _image_md(out / name, f"Table {key}", max_width=900)
            for key, name in charts.items()
            if (out / name).is_file()
        },
        **{
            f"grid_{name}": _image_md(path, f"{name}: {' | '.join(titles)}", max_width=900)
            for name, (path, titles) in result.grids.items()
        },
        "score_rows": dg.MetadataValue.json(dict(Counter(row.bench for row in result.scores))),
        "methods": dg.MetadataValue.json(sorted({row.method for row in result.scores})),
        "files": dg.MetadataValue.json(result.files),
        "charts": dg.MetadataValue.json(charts),
        "uri": dg.MetadataValue.url(uri),
    }
    check = dg.AssetCheckResult(
        check_name=TABLED_CHECK,
        passed=result.passed,
        metadata={
            "methods_missing_per_table": dg.MetadataValue.json(result.missing_per_table),
            "files_not_in_store": dg.MetadataValue.json(result.not_in_store),
        },
    )
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
