"""The lineage of every sample: one index over all stages, and a job that looks one up."""

import io
import json

import dagster as dg
from pydantic import Field

from assets.metadata import parquet_output_metadata
from assets.resources import ObjectStoreResource
from cotir_pipeline.lineage.build import (
    STAGE_LOCATIONS,
    build_lineage_from_store,
    discover_stage_inputs,
)
from cotir_pipeline.lineage.read import LineageIndexMissingError, lookup, open_lineage
from cotir_pipeline.lineage.schema import LINEAGE_SCHEMA
from cotir_pipeline.store import ObjectStore


def build_lineage_assets(
    upstream: list[dg.AssetKey], op_tags: dict[str, str]
) -> list[dg.AssetsDefinition]:
    """``sample_lineage``, downstream of every stage whose per-sample rows it joins."""

    @dg.asset(
        group_name="lineage",
        kinds={"parquet"},
        deps=upstream,
        op_tags=op_tags,
        description="One queryable index of every sample's chain: source file, recipe and "
        "seed, shards, annotation, filter decision, training, bench sets and evaluation rows.",
        check_specs=[
            dg.AssetCheckSpec(
                "index_answers_look_ups",
                asset="sample_lineage",
                description="The committed index, read back, finds a sample of every pair "
                "manifest and of every bench set.",
            )
        ],
    )
    def sample_lineage(store: ObjectStoreResource) -> dg.MaterializeResult:
        """Join every stage's per-sample rows in the store into the lineage index."""
        object_store = store.open()
        report = build_lineage_from_store(object_store)
        unanswered = _unanswered_look_ups(object_store)
        stages = "\n".join(
            f"| {stage} | `{_location(prefix, name)}` | {report.stage_rows.get(stage, 0)} |"
            for stage, (prefix, name) in STAGE_LOCATIONS.items()
        )
        per_sample = report.bytes_per_sample()
        return dg.MaterializeResult(
            metadata={
                "samples": report.samples,
                **parquet_output_metadata(LINEAGE_SCHEMA, report.samples),
                "parts_written": report.parts_written,
                "parts_unchanged": report.parts_unchanged,
                "bytes_per_sample": round(sum(per_sample.values()), 1),
                "status_counts": dg.MetadataValue.json(report.status_counts),
                "furthest_stage": dg.MetadataValue.json(report.stage_counts),
                "stages": dg.MetadataValue.md(
                    "| stage | rows read from | rows |\n|---|---|---:|\n" + stages
                ),
                "look_up": dg.MetadataValue.md(
                    "Command line: `cotir lineage <sample id>` or "
                    "`cotir lineage --where \"source = 'demo' and status = 'dropped'\"`; in "
                    "this UI: launch the `lineage_lookup` job with the sample id."
                ),
                "uri": dg.MetadataValue.url(object_store.uri(report.index_key)),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="index_answers_look_ups",
                    passed=not unanswered,
                    metadata={"not_found": dg.MetadataValue.json(unanswered)},
                )
            ],
        )

    return [sample_lineage]


def _unanswered_look_ups(store: ObjectStore) -> list[str]:
    """The first sample of each pair manifest and bench manifest that the index can't find."""

    import pyarrow.parquet as pq

    index = open_lineage(store)
    inputs = discover_stage_inputs(store)
    missing = []
    for stage in ("pair_shards", "bench_sets"):
        for key in inputs.get(stage, []):
            table = pq.read_table(io.BytesIO(store.get_bytes(key)), columns=["sample_id"])
            if table.num_rows and index.lookup(table.column("sample_id")[0].as_py()) is None:
                missing.append(f"{key}: {table.column('sample_id')[0].as_py()}")
    return missing


def _location(prefix: str, name: str) -> str:
    """Where a stage's per-sample files are, as a pattern (see ``STAGE_LOCATIONS``)."""
    if name.startswith("."):
        return f"{prefix}/<method>/<bench>{name}"
    return f"{prefix}/<partition>/{name}"


#: The id the launchpad opens with: replace it and press Launch Run.
LOOKUP_PLACEHOLDER = "paste-a-sample-id-here"


class LineageLookupConfig(dg.Config):
    """The sample to look up."""

    sample_id: str = Field(description="A sample id (32 hex characters) from any manifest.")


@dg.op(description="Print one sample's chain from source file to evaluation rows.")
def look_up_sample(
    context: dg.OpExecutionContext, config: LineageLookupConfig, store: ObjectStoreResource
) -> dg.Output[None]:
    """Look the sample up in the lineage index and report its chain as metadata."""
    from cotir_pipeline.lineage.details import chain_details

    if config.sample_id.strip() in ("", LOOKUP_PLACEHOLDER):
        raise dg.Failure(
            description="sample_id: replace the placeholder in the Launchpad with a sample id "
            "(32 hex characters, e.g. from any manifest or `cotir lineage --where ...`)"
        )
    object_store = store.open()
    try:
        record = lookup(object_store, config.sample_id.strip().lower())
    except ValueError as error:
        raise dg.Failure(description=f"sample_id: {error}") from None
    except LineageIndexMissingError:
        raise dg.Failure(
            description="there is no lineage index yet: materialize sample_lineage first"
        ) from None
    if record is None:
        raise dg.Failure(
            description=f"sample {config.sample_id} is not in the lineage index (it holds every "
            "sample of every manifest; check the id, or re-materialize sample_lineage if the "
            "sample is newer than the index)"
        )
    details = chain_details(object_store, record)
    text = record.format() + ("\n\n" + "\n".join(details) if details else "")
    context.log.info(text)
    return dg.Output(
        None,
        metadata={
            "chain": dg.MetadataValue.md(f"```\n{text}\n```"),
            "record": dg.MetadataValue.json(json.loads(json.dumps(record.to_dict(), default=str))),
        },
    )


@dg.job(
    description="Look up one sample's lineage: open this job's Launchpad, replace the "
    "placeholder with a sample id (32 hex characters, from any manifest or "
    "`cotir lineage --where ...`) and press Launch Run; the run's log shows the chain.",
    config={"ops": {"look_up_sample": {"config": {"sample_id": LOOKUP_PLACEHOLDER}}}},
    # Interactive: it jumps the run queue (evaluation runs may be waiting there).
    tags={"dagster/priority": "10"},
)
def lineage_lookup() -> None:
    """A one-op job for the UI: the same look-up as `cotir lineage SAMPLE_ID`."""
    look_up_sample()
