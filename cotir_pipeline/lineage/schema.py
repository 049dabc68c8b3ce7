"""The lineage schema: one row per sample, one column group per stage, versioned.

Each stage that writes per-sample rows (docs/ARCHITECTURE.md, "Per-sample status is data")
contributes a :class:`StageSpec`: the columns lineage reads from that stage's
rows (its input contract) and the lineage columns they become. Stages that do not
exist yet have their column groups defined here, so the index keeps one schema as
they arrive: their columns stay null until their rows are handed to the build.

Column names are what ``--where`` filters accept, so they are stable; a change
that renames or retypes a column bumps :data:`LINEAGE_SCHEMA_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

#: Version of the lineage table layout (columns, types, meaning); stored in every
#: part file and in the index file. Readers refuse a newer version than they know.
LINEAGE_SCHEMA_VERSION = 1

#: Folder of the index in the store.
LINEAGE_PREFIX = "sample_lineage"
#: The small metadata file that names the part files (written last: the commit point).
INDEX_KEY = f"{LINEAGE_PREFIX}/_index.json"
#: Content-addressed part files: ``parts/<hex bucket>-<sha256 prefix>.parquet``.
PARTS_PREFIX = f"{LINEAGE_PREFIX}/parts/"
#: Parquet key-value metadata key holding the schema version.
VERSION_METADATA_KEY = b"cotir.lineage.schema_version"

STATUS_OK = "ok"
STATUS_DROPPED = "dropped"
STATUS_FAILED = "failed"

#: Values of ``filter_decision`` and the overall status each one means.
FILTER_KEEP = "keep"
FILTER_DROP = "drop"

#: Column group of the columns that identify a sample (they come with the pair stage).
IDENTITY = "identity"
#: Column group of the overall status columns, computed by the build.
OVERALL = "overall"


@dataclass(frozen=True)
class StageSpec:
    """One stage's per-sample rows as lineage reads them.

    ``inputs`` maps a column of the stage's rows to its lineage column; the
    ``required`` ones must be present in the stage's rows (the rest may be missing
    and are then null). ``many`` stages may have several rows per sample (a sample
    consumed by several training runs); their one input value per row is gathered
    into the sorted, de-duplicated list column ``list_column``.
    """

    name: str
    description: str
    inputs: tuple[tuple[str, str], ...]
    required: tuple[str, ...]
    #: Lineage column that is non-null exactly when the sample has a row in this stage.
    presence: str
    many: bool = False

    @property
    def input_columns(self) -> list[str]:
        """Columns read from the stage's rows (besides the join key)."""
        return [source for source, _ in self.inputs]

    @property
    def output_columns(self) -> list[str]:
        """Lineage columns this stage fills."""
        return [target for _, target in self.inputs]


#: Stages in pipeline order: the "furthest stage reached" is the last one with a row.
#: ``raw_pairs`` joins on (source, item_key, degradation, seed) because a plan row is
#: written before the sample id (a hash of the image bytes) exists; every other stage
#: joins on ``sample_id``.
STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="raw_pairs",
        description="the planned pair: LQ/HQ files of a fetched source, or recipe + seed",
        inputs=(
            ("status", "raw_status"),
            ("lq_path", "lq_path"),
            ("hq_path", "hq_path"),
            ("recipe", "recipe"),
        ),
        required=("source", "item_key", "degradation", "status"),
        presence="raw_status",
    ),
    StageSpec(
        name="pair_shards",
        description="the LQ/HQ pair stored in a WebDataset shard (the manifest row)",
        inputs=(
            ("source", "source"),
            ("item_key", "item_key"),
            ("split", "split"),
            ("degradation", "degradation"),
            ("task", "task"),
            ("seed", "seed"),
            ("status", "pair_status"),
            ("reason", "pair_reason"),
            ("shard_uri", "shard_uri"),
            ("shard_key", "shard_key"),
        ),
        required=("sample_id", "source", "item_key", "status"),
        presence="pair_status",
    ),
    StageSpec(
        name="cot_annotations",
        description="the VLM's precise prompt and chain of thought for the pair",
        inputs=(
            ("status", "annotation_status"),
            ("reason", "annotation_reason"),
            ("model", "annotation_model"),
            ("template_version", "annotation_template_version"),
            ("response_sha256", "annotation_response_sha256"),
        ),
        required=("sample_id", "status"),
        presence="annotation_status",
    ),
    StageSpec(
        name="filtered_annotations",
        description="CLIP consistency and rule checks: keep or drop, with score and reason",
        inputs=(
            ("decision", "filter_decision"),
            ("score", "filter_score"),
            ("reason", "filter_reason"),
        ),
        required=("sample_id", "decision"),
        presence="filter_decision",
    ),
    StageSpec(
        name="training_shards",
        description="the sample in a final training shard with its CoT metadata",
        inputs=(("shard_uri", "train_shard_uri"), ("shard_key", "train_shard_key")),
        required=("sample_id", "shard_uri"),
        presence="train_shard_uri",
    ),
    StageSpec(
        name="training_runs",
        description="training runs (checkpoints) that consumed the sample",
        inputs=(("run_id", "training_runs"),),
        required=("sample_id", "run_id"),
        presence="training_runs",
        many=True,
    ),
    StageSpec(
        name="bench_sets",
        description="bench sets (CoTIR-Bench test, 7D, AgenticIR, real-world) holding it",
        inputs=(("bench_set", "bench_sets"),),
        required=("sample_id", "bench_set"),
        presence="bench_sets",
        many=True,
    ),
    StageSpec(
        name="evaluation",
        description="evaluation rows (method x bench metric rows) that scored it",
        inputs=(("evaluation_row", "evaluation_rows"),),
        required=("sample_id", "evaluation_row"),
        presence="evaluation_rows",
        many=True,
    ),
)

#: Prefix of the metric columns in the evaluation stage's per-sample files
#: (``score:psnr``, ``score:ssim``, ...; written by ``evaluation.scoring.sample_rows``).
SCORE_COLUMN_PREFIX = "score:"

#: Where each stage's per-sample rows live in the store:
#: ``<prefix>/<partition>/<file name>``, one file per partition (source, run, bench); a
#: file name starting with "." is a suffix: ``<prefix>/<method>/<bench><suffix>`` (the
#: evaluation's partitions are method x bench).
STAGE_LOCATIONS: dict[str, tuple[str, str]] = {
    "raw_pairs": ("raw_pairs", "pairs.parquet"),
    "pair_shards": ("pair_shards", "manifest.parquet"),
    "cot_annotations": ("cot_annotations", "manifest.parquet"),
    "filtered_annotations": ("filtered_annotations", "manifest.parquet"),
    "training_shards": ("training_shards", "manifest.parquet"),
    "training_runs": ("training_runs", "manifest.parquet"),
    "bench_sets": ("bench_sets", "manifest.parquet"),
    "evaluation": ("metric_scores", ".samples.parquet"),
}


def stage_file_key(stage: str, *partition: str) -> str:
    """Store key of one partition's per-sample file of ``stage`` (see :data:`STAGE_LOCATIONS`).

    ``stage_file_key("training_runs", run)`` is ``training_runs/<run>/manifest.parquet``;
    the evaluation's partition is (method, bench): ``metric_scores/<method>/<bench>.samples
    .parquet``.
    """
    prefix, file_name = STAGE_LOCATIONS[stage]
    if file_name.startswith("."):
        *folders, last = partition
        return "/".join([prefix, *folders, last + file_name])
    return "/".join([prefix, *partition, file_name])


def is_stage_file(stage: str, key: str) -> bool:
    """Whether ``key`` is one partition's per-sample file of ``stage``.

    Only ``<prefix>/<partition>/<file name>`` matches (or ``<prefix>/<file name>`` for
    an unpartitioned stage such as the training shards; ``<prefix>/<method>/<bench>
    <suffix>`` for the evaluation), so per-shard manifests deeper in ``pair_shards/`` are
    not read twice.
    """
    prefix, file_name = STAGE_LOCATIONS[stage]
    if not key.startswith(f"{prefix}/"):
        return False
    if file_name.startswith("."):
        return key.count("/") == 2 and key.endswith(file_name)
    return key.count("/") in (1, 2) and key.endswith(f"/{file_name}")


STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
STAGE_BY_NAME: dict[str, StageSpec] = {stage.name: stage for stage in STAGES}


def _field(name: str, kind: pa.DataType, group: str, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, kind, nullable=nullable, metadata={"group": group, "doc": doc})


_LIST = pa.list_(pa.string())

#: The lineage table: one row per sample id seen in any stage, sorted by sample id.
LINEAGE_SCHEMA = pa.schema(
    [
        _field("sample_id", pa.string(), IDENTITY, "content hash of the sample", nullable=False),
        _field("source", pa.string(), IDENTITY, "source dataset name"),
        _field("item_key", pa.string(), IDENTITY, "the item within the source"),
        _field("split", pa.string(), IDENTITY, "split rule of the source (train, bench, ...)"),
        _field("degradation", pa.string(), IDENTITY, "degradation label"),
        _field("task", pa.string(), IDENTITY, "task code of the label"),
        _field("raw_status", pa.string(), "raw_pairs", "status of the planned pair"),
        _field("lq_path", pa.string(), "raw_pairs", "LQ file, relative to the fetched root"),
        _field("hq_path", pa.string(), "raw_pairs", "HQ file, relative to the fetched root"),
        _field("recipe", pa.string(), "raw_pairs", "synthesis recipe as <set>:<name>"),
        _field("seed", pa.int64(), "raw_pairs", "seed of the synthesis recipe"),
        _field("pair_status", pa.string(), "pair_shards", "ok / dropped / failed"),
        _field("pair_reason", pa.string(), "pair_shards", "why the pair was not stored"),
        _field("shard_uri", pa.string(), "pair_shards", "URL of the pair shard"),
        _field("shard_key", pa.string(), "pair_shards", "sample key inside the shard"),
        _field("annotation_status", pa.string(), "cot_annotations", "ok / failed"),
        _field("annotation_reason", pa.string(), "cot_annotations", "why annotation failed"),
        _field("annotation_model", pa.string(), "cot_annotations", "annotating model"),
        _field(
            "annotation_template_version", pa.string(), "cot_annotations", "instruction version"
        ),
        _field("annotation_response_sha256", pa.string(), "cot_annotations", "raw response digest"),
        _field("filter_decision", pa.string(), "filtered_annotations", "keep / drop"),
        _field("filter_score", pa.float32(), "filtered_annotations", "CLIP consistency score"),
        _field("filter_reason", pa.string(), "filtered_annotations", "why it was dropped"),
        _field("train_shard_uri", pa.string(), "training_shards", "URL of the training shard"),
        _field("train_shard_key", pa.string(), "training_shards", "key inside that shard"),
        _field("training_runs", _LIST, "training_runs", "runs that consumed the sample"),
        _field("bench_sets", _LIST, "bench_sets", "bench sets holding the sample"),
        _field("evaluation_rows", _LIST, "evaluation", "evaluation rows scoring the sample"),
        _field("stage", pa.string(), OVERALL, "furthest stage with a row for the sample"),
        _field("status", pa.string(), OVERALL, "status at that stage: ok / dropped / failed"),
        _field("reason", pa.string(), OVERALL, "reason at that stage"),
    ],
    metadata={VERSION_METADATA_KEY: str(LINEAGE_SCHEMA_VERSION).encode()},
)

#: Columns ``--where`` may compare (every scalar column).
SCALAR_COLUMNS: tuple[str, ...] = tuple(
    field.name for field in LINEAGE_SCHEMA if not pa.types.is_list(field.type)
)
#: List columns ``--where`` may test with ``contains``.
LIST_COLUMNS: tuple[str, ...] = tuple(
    field.name for field in LINEAGE_SCHEMA if pa.types.is_list(field.type)
)

#: Columns a ``query`` returns unless asked for others.
DEFAULT_QUERY_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "source",
    "item_key",
    "split",
    "degradation",
    "stage",
    "status",
    "reason",
)

#: Low-cardinality columns: dictionary-encoded in the part files.
DICTIONARY_COLUMNS: tuple[str, ...] = (
    "source",
    "split",
    "degradation",
    "task",
    "raw_status",
    "recipe",
    "pair_status",
    "pair_reason",
    "shard_uri",
    "annotation_status",
    "annotation_reason",
    "annotation_model",
    "annotation_template_version",
    "filter_decision",
    "filter_reason",
    "train_shard_uri",
    "training_runs",
    "bench_sets",
    "stage",
    "status",
    "reason",
)


def column_group(name: str) -> str:
    """Stage (or ``identity`` / ``overall``) a lineage column belongs to."""
    field = LINEAGE_SCHEMA.field(name)
    return (field.metadata or {}).get(b"group", b"").decode()


def stage_of_group(group: str) -> str | None:
    """Stage name of a column group, None for identity and overall columns."""
    return group if group in STAGE_BY_NAME else None
