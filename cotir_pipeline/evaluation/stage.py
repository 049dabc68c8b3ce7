"""The evaluation stage without Dagster: bench sets in the store, and the store layout they share.

What the stage keeps in the object store::

    bench_sets/index.json                       status of every set of the profile (ok / n/a)
    bench_sets/<bench>/{test.jsonl, info.json, files.json, lq/, hq/, lineage manifest}
    restorations/<method>/<bench>/{vague,precise}/   outputs and runtime logs
    restorations/<method>/<bench>/{run.json, samples.parquet}
    metric_scores/<method>/<bench>{.parquet, .runtime.parquet, .samples.parquet}
    benchmark_tables/                           Tables II-VI and VIII, grids, charts

This module names that layout, holds the profile's bench registry, and builds, uploads
and fetches the bench sets (only changed files travel). :mod:`.method_runs` restores and
scores one method on one set; :mod:`.reporting` writes the tables. The Dagster assets in
``assets/evaluation/`` call these and report what they return. Problems a user must fix
raise :class:`EvaluationError`, which the assets turn into a failed run with its message.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cotir_pipeline.digests import file_sha256
from cotir_pipeline.evaluation import bench_builders as builders
from cotir_pipeline.evaluation import bench_sets as sets
from cotir_pipeline.evaluation.bench_sets import (
    HQ_DIR,
    INFO_NAME,
    LQ_DIR,
    MANIFEST_NAME,
    BenchFormatError,
    BenchSet,
    read_bench_set,
)
from cotir_pipeline.lineage.schema import STAGE_LOCATIONS
from cotir_pipeline.settings import Profile
from cotir_pipeline.store import ObjectStore
from cotir_pipeline.store.sync import local_files, stored_sizes

# --------------------------------------------------------------------------------------------
# The store layout

BENCH_SETS_PREFIX = "bench_sets"
#: ``bench_sets/index.json``: every set of the profile, ok with its counts or n/a with why.
BENCH_INDEX = f"{BENCH_SETS_PREFIX}/index.json"
RESTORATIONS_PREFIX = "restorations"
METRIC_SCORES_PREFIX = "metric_scores"
BENCHMARK_TABLES_PREFIX = "benchmark_tables"
#: ``metric_scores/<method>/<bench>.samples.parquet``: one row per sample and prompt
#: (lineage's evaluation rows; see ``cotir_pipeline.evaluation.scoring.sample_rows``).
SAMPLE_ROWS_SUFFIX = STAGE_LOCATIONS["evaluation"][1]
#: Per bench set: relative path -> sha256 and size of every file (restorations sync by it).
FILES_INDEX = "files.json"
#: Per restoration partition: which restorer, version and bench manifest made the outputs.
RUN_RECORD = "run.json"
#: ``restorations/<method>/<bench>/samples.parquet``: one row per sample and prompt kind
#: (``cotir_pipeline.evaluation.scoring.restoration_rows``), rewritten by every run.
RESTORATION_ROWS = "samples.parquet"
#: The partition's own records beside its outputs: never synced as outputs.
PARTITION_RECORDS = frozenset({RUN_RECORD, RESTORATION_ROWS})

#: Folders under COTIR_MIRROR_DIR the full profile reads when the configuration names none.
MIRROR_COTIR_BENCH = "cotir_bench_test"
MIRROR_MIO100 = "mio100"
MIRROR_MIO100_DEPTH = "mio100_depth"
MIRROR_REAL_WORLD = "real_world_bench"
MIRROR_METHOD_OUTPUTS = "method_outputs"

_KEY_SEGMENT = re.compile(r"[^A-Za-z0-9._=+,@~:%-]")


class EvaluationError(Exception):
    """A problem with the stage's input or configuration that a re-run alone cannot fix."""


class EvaluationOptions(Protocol):
    """What the stage reads from its configuration (the Dagster resource provides it)."""

    @property
    def profile(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def cache(self) -> Path: ...
    @property
    def demo_bench_per_recipe(self) -> int: ...
    @property
    def demo_agenticir_per_combination(self) -> int: ...
    @property
    def demo_seven_d_count(self) -> int: ...
    @property
    def cotir_bench_dir(self) -> str | None: ...
    @property
    def mio100_dir(self) -> str | None: ...
    @property
    def mio100_depth_dir(self) -> str | None: ...
    @property
    def seven_d_clean_dir(self) -> str | None: ...
    @property
    def seven_d_count(self) -> int: ...
    @property
    def real_world_dir(self) -> str | None: ...
    @property
    def real_world_degradations(self) -> dict[str, str]: ...
    @property
    def method_folders(self) -> dict[str, str]: ...
    @property
    def weights_dir(self) -> str | None: ...
    @property
    def cotir_steps(self) -> int | None: ...
    @property
    def checkpoint_prefix(self) -> str: ...


def checked_device(device: str, field: str = "evaluation.device") -> str:
    """``device`` when it is cpu, cuda or cuda:N; an EvaluationError naming ``field`` if not."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise EvaluationError(f"{field}: expected cpu, cuda or cuda:N, got {device!r}")
    return device


# --------------------------------------------------------------------------------------------
# Bench sets of a profile


@dataclass(frozen=True)
class BenchSpec:
    """One bench set: its partition name, what kind of set it is and how it is scored."""

    name: str
    kind: str  # cotir_bench, agenticir, seven_d or real_world
    metric_set: str  # a key of METRIC_SETS
    sr_factor: int  # the classical chain's upsampling of low-resolution LQ
    description: str


DEMO_BENCHES: tuple[BenchSpec, ...] = (
    BenchSpec(
        "demo_bench",
        "cotir_bench",
        "cotir_bench",
        1,
        "the demo profile's stand-in for the CoTIR-Bench test set: 128 px patches of the demo "
        "bench photos with 11 demo recipes; not comparable with the paper's numbers",
    ),
    BenchSpec(
        "agenticir_demo",
        "agenticir",
        "agenticir",
        4,
        "the AgenticIR plan on overlapping crops of the 3 demo bench photos (not MiO100), "
        "reduced per combination; not comparable with the paper's numbers",
    ),
    BenchSpec(
        "seven_d_demo",
        "seven_d",
        "seven_d",
        1,
        "a small 7D subset on crops of the demo bench photos; not comparable with the paper",
    ),
)
FULL_BENCHES: tuple[BenchSpec, ...] = (
    BenchSpec("cotir_bench", "cotir_bench", "cotir_bench", 1, "the CoTIR-Bench test set"),
    BenchSpec("agenticir", "agenticir", "agenticir", 4, "the AgenticIR set rebuilt on MiO100"),
    BenchSpec("seven_d", "seven_d", "seven_d", 1, "the 7D subset (a reconstruction)"),
    BenchSpec("real_world", "real_world", "real_world", 1, "the real-world set (no reference)"),
)


def bench_specs(profile: Profile | str) -> tuple[BenchSpec, ...]:
    """The bench sets (and bench partitions) of a profile."""
    return DEMO_BENCHES if Profile(profile) is Profile.DEMO else FULL_BENCHES


def bench_spec(name: str, profile: Profile | str) -> BenchSpec:
    """The spec of bench ``name`` in ``profile``; KeyError names the known ones."""
    for spec in bench_specs(profile):
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in bench_specs(profile))
    raise KeyError(f"no bench set {name!r} in the {Profile(profile).value} profile ({known})")


def available_benches(store: ObjectStore, benches: Sequence[str]) -> list[str]:
    """The benches bench_sets built (all of them before it has run: those runs fail clearly)."""
    if not store.exists(BENCH_INDEX):
        return list(benches)
    status = json.loads(store.get_text(BENCH_INDEX))
    return [name for name in benches if status.get(name, {}).get("status") == "ok"]


# --------------------------------------------------------------------------------------------
# Files between the store and the local cache


class UploadReport(NamedTuple):
    """What one set or output tree upload did."""

    uploaded: int
    unchanged: int
    deleted: int


def _safe_name(text: str) -> str:
    """A store-key-safe file stem for ``text`` (a short hash keeps changed names unique)."""
    cleaned = _KEY_SEGMENT.sub("-", text).strip(".") or "x"
    if cleaned != text:
        cleaned = f"{cleaned[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return cleaned


def upload_bench(
    store: ObjectStore, name: str, files: Mapping[str, Path], manifest: bytes, info: bytes
) -> UploadReport:
    """Upload a bench set: changed files, then ``files.json``, then ``test.jsonl`` last.

    A file whose sha256 (from the stored ``files.json``) and size are unchanged is not
    uploaded again; objects of an earlier build that are no longer part of the set are
    deleted after the new manifest is in place.
    """
    prefix = f"{BENCH_SETS_PREFIX}/{name}"
    stored = stored_sizes(store, prefix)
    previous: dict[str, Any] = {}
    if FILES_INDEX in stored:
        previous = json.loads(store.get_text(f"{prefix}/{FILES_INDEX}"))
    index: dict[str, dict[str, Any]] = {}
    uploaded = unchanged = 0
    for relative, path in sorted(files.items()):
        entry = {"sha256": file_sha256(path), "size": path.stat().st_size}
        index[relative] = entry
        if previous.get(relative) == entry and stored.get(relative) == entry["size"]:
            unchanged += 1
            continue
        store.put_file(f"{prefix}/{relative}", path)
        uploaded += 1
    index[INFO_NAME] = {"sha256": hashlib.sha256(info).hexdigest(), "size": len(info)}
    index[MANIFEST_NAME] = {"sha256": hashlib.sha256(manifest).hexdigest(), "size": len(manifest)}
    index_text = json.dumps(index, indent=1, sort_keys=True)
    # The manifest goes last: a set with a test.jsonl is complete.
    for relative, data in (
        (INFO_NAME, info),
        (FILES_INDEX, index_text.encode()),
        (MANIFEST_NAME, manifest),
    ):
        if relative == FILES_INDEX:
            changed = previous != index or relative not in stored
        else:
            changed = previous.get(relative) != index[relative] or relative not in stored
        if not changed:
            unchanged += 1
            continue
        store.put_bytes(f"{prefix}/{relative}", data)
        uploaded += 1
    stale = [relative for relative in stored if relative not in index and relative != FILES_INDEX]
    for relative in stale:
        store.delete(f"{prefix}/{relative}")
    return UploadReport(uploaded, unchanged, len(stale))


def _bench_missing(store: ObjectStore, name: str) -> EvaluationError:
    """Why bench ``name`` is not in the store (from bench_sets' index)."""
    why = "materialize bench_sets first"
    if store.exists(BENCH_INDEX):
        status = json.loads(store.get_text(BENCH_INDEX)).get(name)
        if status and status.get("status") == "n/a":
            why = f"bench_sets left it out: {status.get('reason')}"
    return EvaluationError(
        f"bench set {name!r} is not in the store "
        f"({store.uri(f'{BENCH_SETS_PREFIX}/{name}/{MANIFEST_NAME}')}): {why}"
    )


def local_bench(store: ObjectStore, name: str, cache: Path) -> BenchSet:
    """The bench set ``name`` from the store, copied into ``cache`` (only changed files).

    The stored ``files.json`` lists every file's sha256; files already in the cache with
    that digest are not downloaded again, files no longer in the set are removed.
    """
    prefix = f"{BENCH_SETS_PREFIX}/{name}"
    if not store.exists(f"{prefix}/{MANIFEST_NAME}") or not store.exists(f"{prefix}/{FILES_INDEX}"):
        raise _bench_missing(store, name)
    index_text = store.get_text(f"{prefix}/{FILES_INDEX}")
    index: dict[str, dict[str, Any]] = json.loads(index_text)
    root = cache / BENCH_SETS_PREFIX / name
    local_index = root / f".{FILES_INDEX}"
    trusted = local_index.is_file() and local_index.read_text(encoding="utf-8") == index_text
    for relative, entry in sorted(index.items()):
        path = root / relative
        fresh = path.is_file() and path.stat().st_size == entry["size"]
        if fresh and (trusted or file_sha256(path) == entry["sha256"]):
            continue
        store.download_file(f"{prefix}/{relative}", path)
    for relative, path in local_files(root).items():
        if relative not in index:
            path.unlink()
    local_index.write_text(index_text, encoding="utf-8")
    try:
        return read_bench_set(root, name=name)
    except BenchFormatError as error:
        raise EvaluationError(f"bench set {name!r}: {error}") from None


def manifest_digest(bench: BenchSet) -> str:
    """sha256 of a bench set's ``test.jsonl`` (which outputs belong to which set)."""
    return file_sha256(bench.root / MANIFEST_NAME)


# --------------------------------------------------------------------------------------------
# Building the sets


@dataclass
class BuiltSet:
    """A set staged locally for upload, or the reason it is not available."""

    spec: BenchSpec
    bench: BenchSet | None = None
    files: dict[str, Path] | None = None
    manifest: bytes = b""
    info: bytes = b""
    reason: str = ""


def _staged(spec: BenchSpec, bench: BenchSet) -> BuiltSet:
    """A set written by a library builder: upload its folder as it is."""
    files = {
        relative: path
        for relative, path in local_files(bench.root).items()
        if relative not in (MANIFEST_NAME, INFO_NAME)
    }
    return BuiltSet(
        spec,
        bench,
        files,
        (bench.root / MANIFEST_NAME).read_bytes(),
        (bench.root / INFO_NAME).read_bytes(),
    )


def _ingested(spec: BenchSpec, bench: BenchSet, source: Path) -> BuiltSet:
    """A set read as it is from a folder, normalized to ``lq/<name>`` and ``hq/<name>``.

    File stems become the (store-key-safe) sample ids, so names are unique even when
    a real-world set has the same file name in two subsets; the original path is kept
    in ``meta.source_lq_path``.
    """
    files: dict[str, Path] = {}
    lines = []
    for record in bench.records:
        lq = bench.lq_file(record)
        stem = _safe_name(record.id)
        lq_name = f"{stem}{lq.suffix.lower()}"
        files[f"{LQ_DIR}/{lq_name}"] = lq
        hq = bench.hq_file(record)
        if hq is not None:
            files[f"{HQ_DIR}/{stem}{hq.suffix.lower()}"] = hq
        meta = {**record.meta, "source_lq_path": record.lq_path}
        lines.append(
            json.dumps(replace(record, lq_path=f"{LQ_DIR}/{lq_name}", meta=meta).to_json())
        )
    info = {
        **bench.info,
        "name": spec.name,
        "count": len(bench.records),
        "has_reference": bench.has_reference,
        "ingested_from": str(source),
    }
    return BuiltSet(
        spec,
        bench,
        files,
        ("\n".join(lines) + "\n").encode("utf-8"),
        (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8"),
    )


def _configured_folder(value: str | None, field_name: str, mirror_name: str) -> Path | None:
    """The folder a field names; None when unset; an EvaluationError when set but missing."""
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise EvaluationError(
            f"evaluation.{field_name}: {folder} is not a folder (set it to the "
            f"folder, or place the data in COTIR_MIRROR_DIR/{mirror_name})"
        )
    return folder


def _not_configured(spec: BenchSpec, field_name: str, mirror_name: str) -> BuiltSet:
    return BuiltSet(
        spec,
        reason=f"not configured: set evaluation.{field_name} or place the data in "
        f"COTIR_MIRROR_DIR/{mirror_name}",
    )


def _read(reader: Callable[[], BenchSet]) -> BenchSet:
    try:
        return reader()
    except BenchFormatError as error:
        raise EvaluationError(str(error)) from None


def _build_demo_set(spec: BenchSpec, options: EvaluationOptions, root: Path) -> BuiltSet:
    """One of the demo profile's built-in sets, seeded."""
    seed = options.seed
    if spec.name == "demo_bench":
        bench = builders.build_demo_bench(root, seed=seed, per_recipe=options.demo_bench_per_recipe)
    elif spec.name == "agenticir_demo":
        bench = builders.build_demo_agenticir_set(
            root, seed=seed, per_combination=options.demo_agenticir_per_combination
        )
    else:
        count = options.demo_seven_d_count
        clean = builders.demo_clean_images(count, 128, seed)
        bench = builders.build_seven_d_subset(clean, root, count=count, seed=seed, name=spec.name)
    return _staged(spec, bench)


def _build_from_mio100(spec: BenchSpec, options: EvaluationOptions, root: Path) -> BuiltSet:
    """The full profile's AgenticIR set or 7D subset, degraded from clean MiO100 images."""
    field_name = "mio100_dir" if spec.name == "agenticir" else "seven_d_clean_dir"
    value = options.mio100_dir
    if spec.name == "seven_d" and options.seven_d_clean_dir:
        value = options.seven_d_clean_dir
    folder = _configured_folder(value, field_name, MIRROR_MIO100)
    if folder is None:
        return _not_configured(spec, field_name, MIRROR_MIO100)
    depth = _configured_folder(options.mio100_depth_dir, "mio100_depth_dir", MIRROR_MIO100_DEPTH)
    try:
        clean = builders.clean_images_from_folder(folder, depth_folder=depth)
        if spec.name == "agenticir":
            bench = builders.build_agenticir_set(clean, root, seed=options.seed, name=spec.name)
        else:
            bench = builders.build_seven_d_subset(
                clean, root, count=options.seven_d_count, seed=options.seed, name=spec.name
            )
    except (ValueError, FileNotFoundError) as error:
        raise EvaluationError(f"evaluation.{field_name} ({folder}): {error}") from None
    return _staged(spec, bench)


def build_set(spec: BenchSpec, options: EvaluationOptions, work: Path) -> BuiltSet:
    """Build (or ingest) one set into ``work``; n/a with the reason when it is not configured."""
    root = work / spec.name
    if spec.name in ("demo_bench", "agenticir_demo", "seven_d_demo"):
        return _build_demo_set(spec, options, root)
    if spec.name == "cotir_bench":
        folder = _configured_folder(options.cotir_bench_dir, "cotir_bench_dir", MIRROR_COTIR_BENCH)
        if folder is None:
            return _not_configured(spec, "cotir_bench_dir", MIRROR_COTIR_BENCH)
        return _ingested(spec, _read(lambda: sets.read_bench_set(folder, name=spec.name)), folder)
    if spec.name == "real_world":
        folder = _configured_folder(options.real_world_dir, "real_world_dir", MIRROR_REAL_WORLD)
        if folder is None:
            return _not_configured(spec, "real_world_dir", MIRROR_REAL_WORLD)
        bench = _read(
            lambda: sets.read_real_world_set(
                folder,
                name=spec.name,
                degradation_of_subset=options.real_world_degradations,
                seed=options.seed,
            )
        )
        return _ingested(spec, bench, folder)
    if spec.name in ("agenticir", "seven_d"):
        return _build_from_mio100(spec, options, root)
    raise KeyError(f"no builder for bench set {spec.name!r}")
