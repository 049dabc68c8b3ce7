"""Which samples a training run consumed, and at which steps: written by the trainer.

Every process (rank) keeps the sample ids of its batches with their step number and
writes them at each checkpoint as ``<run>/consumed/rank-RRRRR-FFFFFFF-TTTTTTT.parquet``:
the ids it trained on in steps F+1 .. T (1-based, as in ``metrics.jsonl``). The files
live beside the checkpoint folders, not in them, so pruning old checkpoints keeps the
record. Resuming from step S removes the files of steps after S (they are trained
again), so the files of a run describe exactly the steps its checkpoints hold: the
checkpoint of step S has seen a sample iff the sample's first step is <= S.

Lineage reads the run's files through :func:`read_consumption` (one row per sample:
first and last step, how many times), instead of crediting a run with every sample of
the training shards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Folder of the consumption files inside a run folder.
CONSUMED_DIR = "consumed"
_FILE = re.compile(r"^rank-(\d{5})-(\d{7})-(\d{7})\.parquet$")
_SCHEMA = pa.schema(
    [pa.field("sample_id", pa.string(), nullable=False), pa.field("step", pa.int32(), False)]
)
#: The aggregated record of a run: one row per sample it trained on.
CONSUMPTION_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("first_step", pa.int32(), nullable=False),
        pa.field("last_step", pa.int32(), nullable=False),
        pa.field("times", pa.int32(), nullable=False),
    ]
)


class ConsumptionLog:
    """One process's consumed sample ids since its last checkpoint (see the module doc)."""

    def __init__(self, run_folder: Path, rank: int, start_step: int) -> None:
        self.folder = Path(run_folder) / CONSUMED_DIR
        self.rank = rank
        self.since = start_step
        self._ids: list[str] = []
        self._steps: list[int] = []

    def forget_after(self, step: int) -> int:
        """Remove this rank's files of steps after ``step`` (a resume redoes them)."""
        removed = 0
        if not self.folder.is_dir():
            return removed
        for path in self.folder.iterdir():
            match = _FILE.match(path.name)
            if match and int(match.group(1)) == self.rank and int(match.group(3)) > step:
                path.unlink()
                removed += 1
        return removed

    def add(self, step: int, sample_ids: Sequence[str]) -> None:
        """Record the ids of one batch, trained at ``step`` (1-based)."""
        self._ids.extend(sample_ids)
        self._steps.extend([step] * len(sample_ids))

    def flush(self, step: int) -> Path | None:
        """Write the ids recorded since the last flush (at a checkpoint of ``step``)."""
        if step <= self.since:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank-{self.rank:05d}-{self.since:07d}-{step:07d}.parquet"
        columns = {
            "sample_id": pa.array(self._ids, pa.string()),
            "step": pa.array(self._steps, pa.int32()),
        }
        table = pa.table(columns, schema=_SCHEMA)
        partial = path.with_name(f".partial-{path.name}")
        pq.write_table(table, partial, compression="zstd")
        os.replace(partial, path)
        self._ids, self._steps, self.since = [], [], step
        return path


def consumption_files(run_folder: Path) -> list[Path]:
    """The run's consumption files (every rank, every checkpoint interval), sorted."""
    folder = Path(run_folder) / CONSUMED_DIR
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if _FILE.match(path.name))


def read_consumption(run_folder: Path, up_to_step: int | None = None) -> pa.Table:
    """One row per sample the run trained on (up to ``up_to_step``), sorted by sample id."""
    tables = [pq.read_table(path, schema=_SCHEMA) for path in consumption_files(run_folder)]
    if not tables:
        return CONSUMPTION_SCHEMA.empty_table()
    rows = pa.concat_tables(tables)
    if up_to_step is not None:
        rows = rows.filter(pc.less_equal(rows["step"], up_to_step))
    grouped = rows.group_by("sample_id").aggregate(
        [("step", "min"), ("step", "max"), ("step", "count")]
    )
    table = pa.table(
        {
            "sample_id": grouped["sample_id"],
            "first_step": pc.cast(grouped["step_min"], pa.int32()),
            "last_step": pc.cast(grouped["step_max"], pa.int32()),
            "times": pc.cast(grouped["step_count"], pa.int32()),
        },
        schema=CONSUMPTION_SCHEMA,
    )
    return table.sort_by("sample_id")
