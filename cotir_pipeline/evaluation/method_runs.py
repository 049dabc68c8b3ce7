"""One method on one bench set: restore it (resumable, synced with the store), then score it.

:func:`restore_partition` makes the method's restorer (:func:`make_method`), resumes
from the outputs already in the local cache or the store, runs both prompt kinds,
uploads what changed and writes the partition's run record and per-sample rows.
:func:`score_partition` scores exactly the stored outputs and writes the score rows.
Both return what they did; the Dagster assets report it. CoTIR checkpoints are loaded by
a function the caller passes in (:data:`CheckpointLoader`), so this library stays free
of the model code.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cotir_pipeline.checkpoint_layout import (
    CHECKPOINT_MARKER,
    CheckpointLayoutError,
    CheckpointRef,
    find_checkpoints,
    model_subfolder,
)
from cotir_pipeline.evaluation.bench_sets import PROMPT_KINDS, BenchSet
from cotir_pipeline.evaluation.method_names import (
    BUILTIN_METHODS,
    CLASSICAL_CHAIN,
    COTIR_METHOD_PREFIX,
    FOLDER_METHOD_PREFIX,
    IDENTITY,
    METHOD_HASH_LENGTH,
)
from cotir_pipeline.evaluation.metrics import METRIC_SETS
from cotir_pipeline.evaluation.restorers import (
    FolderRestorer,
    IdentityRestorer,
    Restorer,
    RunSummary,
    SequentialToolChain,
    run_restorer,
)
from cotir_pipeline.evaluation.scoring import RuntimeRow, ScoreRow
from cotir_pipeline.evaluation.stage import (
    METRIC_SCORES_PREFIX,
    PARTITION_RECORDS,
    RESTORATION_ROWS,
    RESTORATIONS_PREFIX,
    RUN_RECORD,
    BenchSpec,
    EvaluationError,
    EvaluationOptions,
    UploadReport,
    checked_device,
    local_bench,
    manifest_digest,
)
from cotir_pipeline.lineage.schema import stage_file_key
from cotir_pipeline.store import ObjectStore
from cotir_pipeline.store.sync import pull, push
from cotir_pipeline.weights import MissingWeightsError

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Restorers by method


@dataclass(frozen=True)
class CheckpointLoad:
    """What loading a CoTIR checkpoint for evaluation needs."""

    folder: Path
    variant: str | None
    weights_dir: Path | None
    home: Path
    device: str
    name: str
    version: str
    steps: int | None


class LoadedCheckpoint(NamedTuple):
    """A loaded checkpoint: its restorer, parameter count and sampling steps."""

    restorer: Restorer
    parameters: int
    steps: int


#: Loads a checkpoint (the Dagster layer passes one built on ``models.restore``); raises
#: MissingWeightsError or ValueError for weights that are missing or do not fit.
CheckpointLoader = Callable[[CheckpointLoad], LoadedCheckpoint]


@dataclass
class MethodRun:
    """A method's restorer per prompt kind and what the tables record about it."""

    method: str
    restorers: dict[str, Restorer]
    version: str
    parameters: int | None = None
    steps: int | None = None
    checkpoint_hash: str | None = None


def make_method(
    method: str,
    spec: BenchSpec,
    store: ObjectStore,
    options: EvaluationOptions,
    load_checkpoint: CheckpointLoader,
    log: Log,
) -> MethodRun:
    """The restorer(s) of ``method`` for bench ``spec`` (CoTIR loads the stored checkpoint)."""
    if method == IDENTITY:
        restorer = IdentityRestorer(name=IDENTITY)
        return MethodRun(method, dict.fromkeys(PROMPT_KINDS, restorer), restorer.version)
    if method == CLASSICAL_CHAIN:
        chain = SequentialToolChain(order="label", sr_factor=spec.sr_factor, name=CLASSICAL_CHAIN)
        return MethodRun(method, dict.fromkeys(PROMPT_KINDS, chain), chain.version)
    if method.startswith(FOLDER_METHOD_PREFIX):
        return _folder_method(method, spec, options)
    if method.startswith(COTIR_METHOD_PREFIX):
        return _cotir_method(method, store, options, load_checkpoint, log)
    raise EvaluationError(
        f"unknown method {method!r}: expected {', '.join(BUILTIN_METHODS)}, "
        f"{COTIR_METHOD_PREFIX}<hash> or {FOLDER_METHOD_PREFIX}<name>"
    )


def _folder_method(method: str, spec: BenchSpec, options: EvaluationOptions) -> MethodRun:
    """A configured folder of another method's outputs, read as they are."""
    name = method.removeprefix(FOLDER_METHOD_PREFIX)
    if name not in options.method_folders:
        raise EvaluationError(f"{method}: evaluation.method_folders has no entry {name!r}")
    root = Path(options.method_folders[name]) / spec.name
    try:
        restorers: dict[str, Restorer] = {
            kind: FolderRestorer.for_release(root, kind, method) for kind in PROMPT_KINDS
        }
    except FileNotFoundError as error:
        raise EvaluationError(
            f"{error} (evaluation.method_folders[{name!r}] must hold "
            f"<bench>/vague/ and <bench>/precise/)"
        ) from None
    return MethodRun(method, restorers, f"precomputed:{root}")


def checkpoint_for(store: ObjectStore, method: str, prefix: str) -> CheckpointRef:
    """The stored checkpoint whose method name is ``method``."""
    matches = [ref for ref in find_checkpoints(store, prefix) if ref.method == method]
    if not matches:
        raise EvaluationError(
            f"{method}: no finished checkpoint (a folder with {CHECKPOINT_MARKER}) "
            f"under {store.uri(prefix)} has this hash; it was removed or re-saved"
        )
    return matches[0]


def _cotir_method(
    method: str,
    store: ObjectStore,
    options: EvaluationOptions,
    load_checkpoint: CheckpointLoader,
    log: Log,
) -> MethodRun:
    """Download the checkpoint's model part into the cache (changed files only) and load it."""
    ref = checkpoint_for(store, method, options.checkpoint_prefix)
    local = options.cache / "checkpoints" / ref.hash[:METHOD_HASH_LENGTH]
    try:
        sub = model_subfolder(ref)
    except CheckpointLayoutError as error:
        raise EvaluationError(str(error)) from None
    pull(store, f"{ref.folder}/{sub}" if sub else ref.folder, local / sub if sub else local)
    variant = ref.marker.get("variant")
    device = checked_device(options.device)
    log(f"{method}: loading {store.uri(ref.folder)} on {device}")
    request = CheckpointLoad(
        folder=local / sub if sub else local,
        variant=variant if isinstance(variant, str) and variant else None,
        weights_dir=Path(options.weights_dir) if options.weights_dir else None,
        home=options.cache,
        device=device,
        name=method,
        version=ref.hash,
        steps=options.cotir_steps,
    )
    try:
        loaded = load_checkpoint(request)
    except (MissingWeightsError, ValueError) as error:
        raise EvaluationError(f"{method}: {error}") from None
    return MethodRun(
        method,
        dict.fromkeys(PROMPT_KINDS, loaded.restorer),
        ref.hash,
        parameters=loaded.parameters,
        steps=loaded.steps,
        checkpoint_hash=ref.hash,
    )


# --------------------------------------------------------------------------------------------
# Outputs between the cache and the store


def reset_if_stale(
    store: ObjectStore, prefix: str, out_dir: Path, made_by: Mapping[str, Any], log: Log
) -> None:
    """Drop outputs made by another restorer version or for another build of the set."""

    def same(record: Mapping[str, Any]) -> bool:
        return all(record.get(key) == value for key, value in made_by.items())

    key = f"{prefix}/{RUN_RECORD}"
    if store.exists(key) and not same(json.loads(store.get_text(key))):
        log(f"{prefix}: outputs of another restorer version or bench build: redoing them")
        store.delete_prefix(prefix + "/")
        shutil.rmtree(out_dir, ignore_errors=True)
    local = out_dir / RUN_RECORD
    if local.is_file() and not same(json.loads(local.read_text(encoding="utf-8"))):
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(dict(made_by), indent=2), encoding="utf-8")


def _an_output(relative: str) -> bool:
    """Outputs and logs sync between cache and store; the partition's records do not."""
    return relative not in PARTITION_RECORDS


def download_missing(store: ObjectStore, prefix: str, out_dir: Path) -> None:
    """Fetch stored outputs and logs the cache lacks (a run resumed on another machine)."""
    pull(store, prefix, out_dir, refresh="missing", include=_an_output)


def upload_outputs(store: ObjectStore, prefix: str, out_dir: Path) -> UploadReport:
    """Upload outputs and runtime logs that the store lacks or holds in another size."""
    report = push(store, out_dir, prefix, refresh="size", include=_an_output)
    return UploadReport(report.copied, report.unchanged, 0)


def mirror_outputs(store: ObjectStore, prefix: str, out_dir: Path) -> None:
    """Make the cached outputs exactly the stored ones, so scores describe the store."""
    pull(store, prefix, out_dir, refresh="size", include=_an_output, remove_extra=True)


def pick_ids(bench: BenchSet, count: int) -> list[str]:
    """One sample per degradation label in set order, up to ``count``."""
    seen: set[str] = set()
    chosen = []
    for record in bench.records:
        if record.deg_type not in seen:
            seen.add(record.deg_type)
            chosen.append(record.id)
        if len(chosen) == count:
            break
    return chosen


# --------------------------------------------------------------------------------------------
# Restoring one partition


@dataclass
class RestorationResult:
    """What one restorations partition did."""

    run: MethodRun
    prefix: str
    samples: int
    summaries: dict[str, RunSummary]
    upload: UploadReport
    sample_rows: int
    preview: bytes  # LQ | vague | precise | HQ for a few samples, PNG

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        """(prompt kind, sample id, reason) of every failed sample."""
        return [(k, sid, why) for k, s in self.summaries.items() for sid, why in s.failed]


def restore_partition(
    store: ObjectStore,
    options: EvaluationOptions,
    method: str,
    spec: BenchSpec,
    bench: BenchSet,
    load_checkpoint: CheckpointLoader,
    log: Log,
) -> RestorationResult:
    """restorations for one partition: resume, run both prompts, upload, record.

    An EvaluationError when every sample failed (a few failures are reported, not raised).
    """
    from cotir_pipeline.evaluation.scoring import restoration_rows, write_restoration_rows
    from cotir_pipeline.evaluation.tables import image_grid

    run = make_method(method, spec, store, options, load_checkpoint, log)
    prefix = f"{RESTORATIONS_PREFIX}/{method}/{spec.name}"
    out_dir = options.cache / RESTORATIONS_PREFIX / method / spec.name
    made_by = {
        "method": method,
        "bench": spec.name,
        "version": run.version,
        "bench_manifest_sha256": manifest_digest(bench),
    }
    reset_if_stale(store, prefix, out_dir, made_by, log)
    download_missing(store, prefix, out_dir)
    summaries = {}
    for kind in PROMPT_KINDS:
        summaries[kind] = run_restorer(run.restorers[kind], bench, out_dir, kind)
        log(
            f"{kind}: {summaries[kind].written} written, {summaries[kind].skipped} already "
            f"there, {len(summaries[kind].failed)} failed"
        )
    upload = upload_outputs(store, prefix, out_dir)
    record = {
        **made_by,
        "parameters": run.parameters,
        "steps": run.steps,
        "checkpoint_hash": run.checkpoint_hash,
        "samples": len(bench),
    }
    store.put_text(f"{prefix}/{RUN_RECORD}", json.dumps(record, indent=2))
    # Per-sample rows (lineage's restoration step): status, output digest, runtime.
    rows = restoration_rows(bench, out_dir, method=method, checkpoint=run.checkpoint_hash)
    with tempfile.TemporaryDirectory(dir=options.cache, prefix=".rows-") as work:
        written = write_restoration_rows(rows, Path(work) / RESTORATION_ROWS)
        store.put_file(f"{prefix}/{RESTORATION_ROWS}", written)
    if all(s.written + s.skipped == 0 for s in summaries.values()):
        failed = next((item for s in summaries.values() for item in s.failed), None)
        if failed is not None:
            raise EvaluationError(
                f"{method} on {spec.name}: every sample failed, e.g. {failed[0]}: {failed[1]}"
            )
    with tempfile.TemporaryDirectory(dir=options.cache, prefix=".grid-") as work:
        grid = image_grid(
            bench,
            {kind: out_dir / kind for kind in PROMPT_KINDS},
            Path(work) / "grid.png",
            sample_ids=pick_ids(bench, 3),
            tile=128,
        )
        preview = grid.read_bytes()
    return RestorationResult(run, prefix, len(bench), summaries, upload, len(rows), preview)


# --------------------------------------------------------------------------------------------
# Scoring one partition


class MeanScore(NamedTuple):
    """A metric's mean over one prompt kind, or None with the reason (no partial means)."""

    metric: str
    prompt_kind: str
    mean: float | None
    images: int
    reason: str


def score_summary(rows: Sequence[ScoreRow]) -> list[MeanScore]:
    """Per metric and prompt kind: the mean, or n/a with the reasons when any value is n/a."""
    grouped: dict[tuple[str, str], list[ScoreRow]] = defaultdict(list)
    for row in rows:
        grouped[(row.metric, row.prompt_kind)].append(row)
    summary = []
    for (metric, kind), items in grouped.items():
        missing = [row for row in items if row.value is None]
        if missing:
            reasons = sorted({row.reason or "no value" for row in missing})
            prefix = "" if len(missing) == len(items) else f"{len(missing)} of {len(items)}: "
            summary.append(
                MeanScore(metric, kind, None, len(items), prefix + "; ".join(reasons[:3]))
            )
        else:
            mean = sum(row.value for row in items if row.value is not None) / len(items)
            summary.append(MeanScore(metric, kind, mean, len(items), ""))
    return summary


class ScoredCheck(NamedTuple):
    """Whether every sample has a row per prompt and metric, and every n/a says why."""

    missing_rows: int
    missing_example: str
    values_without_reason: int

    @property
    def passed(self) -> bool:
        """No row missing and no unexplained n/a."""
        return not self.missing_rows and not self.values_without_reason


def scored_check(bench: BenchSet, rows: Sequence[ScoreRow]) -> ScoredCheck:
    """Check that every sample has a row per prompt and metric, and every n/a a reason."""
    metrics = sorted({row.metric for row in rows})
    have = {(row.sample_id, row.prompt_kind, row.metric) for row in rows}
    missing = [
        (record.id, kind, metric)
        for record in bench.records
        for kind in PROMPT_KINDS
        for metric in metrics
        if (record.id, kind, metric) not in have
    ]
    unexplained = [row for row in rows if row.value is None and not row.reason]
    return ScoredCheck(len(missing), str(missing[0]) if missing else "", len(unexplained))


@dataclass
class ScoringResult:
    """What one metric_scores partition wrote."""

    key: str
    device: str
    rows: list[ScoreRow]
    runtimes: list[RuntimeRow]
    summary: list[MeanScore]
    check: ScoredCheck


def score_partition(
    store: ObjectStore,
    options: EvaluationOptions,
    method: str,
    spec: BenchSpec,
) -> ScoringResult:
    """metric_scores for one partition: the stored outputs, scored, as Parquet rows."""
    from cotir_pipeline.evaluation.scoring import (
        evaluate_outputs,
        runtime_rows,
        write_rows,
        write_sample_rows,
    )

    device = checked_device(options.device)
    bench = local_bench(store, spec.name, options.cache)
    prefix = f"{RESTORATIONS_PREFIX}/{method}/{spec.name}"
    if not store.exists(f"{prefix}/{RUN_RECORD}"):
        raise EvaluationError(
            f"no restorations of {method} on {spec.name} in the store "
            f"({store.uri(prefix)}): materialize restorations first"
        )
    out_dir = options.cache / RESTORATIONS_PREFIX / method / spec.name
    mirror_outputs(store, prefix, out_dir)
    metrics = METRIC_SETS[spec.metric_set]
    cache: dict[Any, Any] = {}
    rows: list[ScoreRow] = []
    runtimes: list[RuntimeRow] = []
    for kind in PROMPT_KINDS:
        rows += evaluate_outputs(
            bench,
            out_dir / kind,
            metrics,
            method=method,
            prompt_kind=kind,
            device=device,
            cache=cache,
        )
        runtimes += runtime_rows(out_dir, method=method, bench=spec.name, prompt_kind=kind)
    key = f"{METRIC_SCORES_PREFIX}/{method}/{spec.name}.parquet"
    runtime_key = f"{METRIC_SCORES_PREFIX}/{method}/{spec.name}.runtime.parquet"
    run_record = json.loads(store.get_text(f"{prefix}/{RUN_RECORD}"))
    with tempfile.TemporaryDirectory(dir=options.cache, prefix=".scores-") as work:
        store.put_file(key, write_rows(rows, Path(work) / "scores.parquet"))
        samples = write_sample_rows(
            bench,
            rows,
            out_dir,
            checkpoint=run_record.get("checkpoint_hash"),
            destination=Path(work) / "samples.parquet",
        )
        store.put_file(stage_file_key("evaluation", method, spec.name), samples)
        if runtimes:
            store.put_file(runtime_key, write_rows(runtimes, Path(work) / "runtime.parquet"))
        else:
            store.delete(runtime_key)
    return ScoringResult(
        key, device, rows, runtimes, score_summary(rows), scored_check(bench, rows)
    )
