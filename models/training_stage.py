"""The training stage without Dagster: the base model, run identity, and what a run trained on.

The ``base_model`` and ``cotir_checkpoint`` assets (``assets/training/assets.py``) call these:
:func:`describe_base` checks the model the runs start from, :func:`rebuild_prior`
retrains the demo prior, :func:`run_key` names a run by what determines its weights, and
:func:`record_training_run` writes the samples a run's batches held for lineage.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cotir_pipeline.annotation_stage import TRAINING_SHARDS_PREFIX
from cotir_pipeline.lineage.schema import stage_file_key
from cotir_pipeline.settings import CotirSettings
from cotir_pipeline.shards import parquet_bytes
from cotir_pipeline.store import ObjectStore
from cotir_pipeline.weights import MissingWeightsError, require_weights
from models import REPOSITORY_ROOT
from models.consumption import read_consumption
from models.prior import PriorIntegrityError, read_record, shipped_config, train_prior
from models.variants import get_variant


class BaseModelError(Exception):
    """The base model is missing or altered; the message names what to fix."""


def describe_base(
    variant_name: str, rebuilt_folder: Path | None, weights_dir: Path | None
) -> dict[str, Any]:
    """Check the base model the runs start from and describe it (path, digest, quality).

    Demo: the shipped prior, verified against the sha256 digests in its ``prior.json``
    (or the one rebuilt into ``rebuilt_folder``). Full: the variant's local FLUX folder
    under ``weights_dir`` (COTIR_WEIGHTS_DIR). A BaseModelError names what to fix when it
    is missing or altered.
    """
    from models.restore import base_fingerprint, base_folder, bundled_base_folder

    variant = get_variant(variant_name)
    try:
        folder = rebuilt_folder
        if folder is not None:
            folder = base_folder(folder)
        elif variant.bundled_base is not None:
            folder = bundled_base_folder(variant)
        elif variant.weights_folder is not None:
            settings = CotirSettings(weights_dir=weights_dir)
            folder = require_weights(
                settings, variant.weights_folder, what=f"{variant.name} base pipeline"
            )
        else:
            return {"variant": variant.name, "kind": "random (test toy, no base)"}
    except (MissingWeightsError, PriorIntegrityError, FileNotFoundError) as error:
        raise BaseModelError(str(error)) from None
    described: dict[str, Any] = {"variant": variant.name, **base_fingerprint(folder)}
    try:
        record = read_record(folder)
    except FileNotFoundError:
        described["kind"] = "local diffusers folder"
        return described
    described["kind"] = "demo editing prior"
    described["quality"] = record.get("quality", {})
    described["prior_steps"] = record.get("steps")
    described["command"] = record.get("command")
    return described


def rebuild_prior(folder: Path, prior_steps: int | None, log: Callable[[str], None]) -> None:
    """Train the demo prior into ``folder`` unless an identical one is there.

    The shipped recipe has two stages; the first is built in ``<folder>-parent``.
    Resumes from the state files after an interruption; skipped when the folder's
    record was made with the same config.
    """
    config = shipped_config()
    if prior_steps:
        config = config.model_copy(update={"steps": prior_steps})
    try:
        if read_record(folder).get("config_sha256") == config.digest():
            log(f"the rebuilt prior in {folder} is up to date (same config); skipping")
            return
    except FileNotFoundError:
        pass
    log(f"training the demo prior into {folder} ({config.steps} steps)")
    train_prior(config, folder, command="base_model asset (rebuild)", print_fn=log)


def run_key(
    variant: str,
    command: Sequence[str],
    shards_digest: str,
    base: Mapping[str, Any],
    *,
    root: Path = REPOSITORY_ROOT,
) -> str:
    """A run id from what determines the weights: command, training data and base.

    Re-materializing with nothing changed finds the same run folder and its finished
    checkpoint (``--resume auto``), so nothing is trained or evaluated twice. Paths inside
    the repository (``root``) count relative to it, so two clones of the repository give
    the same run the same id; pass the training data by placeholder, its identity is
    ``shards_digest``.
    """
    prefix = f"{root}/"
    stable = [part.replace(prefix, "<repo>/") for part in command if part != sys.executable]
    text = json.dumps(
        {
            "command": stable,
            "shards": shards_digest,
            "base": dict(base),
            "variant": variant,
        },
        sort_keys=True,
    )
    return "r" + hashlib.sha256(text.encode()).hexdigest()[:10]


def shards_digest(store: ObjectStore) -> str:
    """The training shards' identity ("" before there are any): a sha256 over their
    manifest's rows (sample ids, sources, degradations, shard keys), without the columns
    of store URIs, so the same shards in another store or clone folder give the same
    digest."""
    key = f"{TRAINING_SHARDS_PREFIX}/manifest.parquet"
    if not store.exists(key):
        return ""
    return table_digest(pq.read_table(io.BytesIO(store.get_bytes(key))))


def table_digest(table: pa.Table) -> str:
    """sha256 of a manifest's rows without its ``*_uri`` columns, in a row order of their
    own: the rows sorted by the kept columns (in name order), then per kept column its
    name, a newline, its values as text joined by NUL bytes, and a newline.

    Plain string columns (the training manifest's, 5.2 M rows at full scale) are joined
    and sorted by Arrow kernels, which gives the same bytes as the definition in
    :func:`_reference_table_digest` in half its time (``scripts/bench_run_key.py``).
    Other columns, nulls or NUL bytes take that definition itself.
    """
    kept = sorted(name for name in table.column_names if not name.endswith("_uri"))
    table = table.select(kept)
    if not kept or not all(_plain_text(table.column(name)) for name in kept):
        return _reference_table_digest(table, kept)
    # With NUL between fields and in no value, the joined rows sort in the columns' order.
    row_keys = pc.binary_join_element_wise(
        *(table.column(name).cast(pa.large_string()) for name in kept),
        pa.scalar("\0", pa.large_string()),
    )
    table = table.take(pc.sort_indices(row_keys))
    digest = hashlib.sha256()
    for name in kept:
        digest.update(f"{name}\n".encode())
        digest.update(_nul_joined(table.column(name)))
        digest.update(b"\n")
    return digest.hexdigest()


def _plain_text(column: pa.ChunkedArray) -> bool:
    """A string column without nulls or NUL bytes (its values are their own text)."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return False
    if column.null_count:
        return False
    return not pc.any(pc.match_substring(column, "\0")).as_py()


def _nul_joined(column: pa.ChunkedArray) -> memoryview:
    """The column's values joined by NUL bytes, as one buffer (no copy of the values)."""
    values = column.cast(pa.large_string()).combine_chunks()
    if len(values) == 0:
        return memoryview(b"")
    # Each value followed by a NUL: the data buffer is the join plus one NUL at the end.
    ended = pc.binary_join_element_wise(
        values, pa.scalar("", pa.large_string()), pa.scalar("\0", pa.large_string())
    )
    offsets = ended.buffers()[1]
    first, last = (
        int.from_bytes(offsets[8 * i : 8 * i + 8], sys.byteorder, signed=True)
        for i in (ended.offset, ended.offset + len(ended))
    )
    return memoryview(ended.buffers()[2])[first : last - 1]


def _reference_table_digest(table: pa.Table, kept: list[str]) -> str:
    """:func:`table_digest` by its definition, value by value in Python."""
    table = table.sort_by([(name, "ascending") for name in kept]) if kept else table
    digest = hashlib.sha256()
    for name in kept:
        values = "\0".join(str(value) for value in table.column(name).to_pylist())
        digest.update(f"{name}\n{values}\n".encode())
    return digest.hexdigest()


#: Columns of ``training_runs/<run>/manifest.parquet``: one row per sample the run trained on.
TRAINING_RUN_COLUMNS = ("sample_id", "run_id", "first_step", "last_step", "times")
#: Rows per row group of a run's manifest (a point look-up decodes one).
TRAINING_RUN_ROW_GROUP = 16_384


def record_training_run(
    store: ObjectStore, run_id: str, variant: str, run_folder: Path
) -> pa.Table:
    """Write which samples this run trained on, and at which steps
    (``training_runs/<run>/manifest.parquet``); return that table (one row per sample).

    The rows come from the trainer's consumption files (:mod:`models.consumption`): only
    the samples its batches held, with their first and last step and how many times, so
    lineage can tell which checkpoints saw a sample (step-S saw it iff first_step <= S).
    """
    consumed = read_consumption(run_folder)
    label = f"{variant}/{run_id}"
    table = pa.table(
        {
            "sample_id": consumed["sample_id"],
            "run_id": pa.array([label] * consumed.num_rows, pa.string()),
            "first_step": consumed["first_step"],
            "last_step": consumed["last_step"],
            "times": consumed["times"],
        }
    )
    # Sorted by sample id (read_consumption's order) in small row groups, so a look-up of
    # one sample reads one row group of a run that saw millions.
    store.put_bytes(
        stage_file_key("training_runs", run_id),
        parquet_bytes(table, row_group_size=TRAINING_RUN_ROW_GROUP),
    )
    return table
