"""Evaluation stage: bench sets, restorations and metric scores per method x bench, the tables.

Assets (group ``evaluation``):
- ``bench_sets``: every bench set of the profile, in the public ``test.jsonl`` + ``lq/`` +
  ``hq/`` format, under ``bench_sets/<name>/`` in the store.
- ``restorations`` [method x bench]: a restorer's outputs under
  ``restorations/<method>/<bench>/{vague,precise}/`` with its runtime logs.
- ``metric_scores`` [method x bench]: one Parquet row per image and metric,
  ``metric_scores/<method>/<bench>.parquet`` (n/a rows carry their reason), and one
  row per sample and prompt for lineage, ``metric_scores/<method>/<bench>.samples.parquet``
  (sample id, method, checkpoint, prompt, output sha256, each metric).
- ``benchmark_tables``: the paper's Tables II-VI and VIII from every score row in the
  store, with the paper's reported rows beside ours, under ``benchmark_tables/``.

Methods are a dynamic partition dimension (``methods``): the built-ins ``identity`` and
``classical_chain``, ``cotir-<hash12>`` for each finished checkpoint found under
``checkpoints/`` (added by ``new_checkpoint_sensor``), and ``folder-<name>`` for
configured folders of another method's outputs. The heavy lifting is in
:mod:`cotir_pipeline.evaluation`; this module moves files between the object store and
a local cache, and reports. See docs/EVALUATION.md, "In Dagster".
"""

import base64
import datetime
import hashlib
import json
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Self

import dagster as dg
from pydantic import Field

from assets.metadata import parquet_output_metadata
from assets.resources import ObjectStoreResource
from cotir_pipeline.digests import file_sha256
from cotir_pipeline.evaluation.bench_sets import (
    HQ_DIR,
    INFO_NAME,
    LINEAGE_MANIFEST_NAME,
    LQ_DIR,
    MANIFEST_NAME,
    PROMPT_KINDS,
    BenchFormatError,
    BenchSet,
    PromptKind,
    bench_lineage_rows,
    bench_lineage_schema,
    read_bench_set,
    unknown_labels,
    write_bench_lineage,
)
from cotir_pipeline.evaluation.method_names import (
    COTIR_METHOD_PREFIX,
    METHOD_HASH_LENGTH,
    METHOD_NAME,
    checkpoint_method,
)
from cotir_pipeline.evaluation.scoring import RuntimeRow, ScoreRow
from cotir_pipeline.lineage.schema import STAGE_LOCATIONS, stage_file_key
from cotir_pipeline.settings import CotirSettings, Profile
from cotir_pipeline.store import ObjectInfo, ObjectStore

# --------------------------------------------------------------------------------------------
# Names

EVALUATION_GROUP = "evaluation"
#: The dynamic partitions definition of the method dimension.
METHODS_PARTITIONS = "methods"
METHOD_DIMENSION = "method"
BENCH_DIMENSION = "bench"
IDENTITY = "identity"
CLASSICAL_CHAIN = "classical_chain"
BUILTIN_METHODS: tuple[str, ...] = (IDENTITY, CLASSICAL_CHAIN)
FOLDER_METHOD_PREFIX = "folder-"

BENCH_SETS_PREFIX = "bench_sets"
RESTORATIONS_PREFIX = "restorations"
METRIC_SCORES_PREFIX = "metric_scores"
#: ``metric_scores/<method>/<bench>.samples.parquet``: one row per sample and prompt
#: (lineage's evaluation rows; see ``cotir_pipeline.evaluation.scoring.sample_rows``).
SAMPLE_ROWS_SUFFIX = STAGE_LOCATIONS["evaluation"][1]
#: The asset check of metric_scores.
SCORED_CHECK = "every_sample_scored_or_explained"
#: The asset check of bench_sets.
BENCH_IDS_CHECK = "samples_with_distinct_lineage_ids"
#: The asset check of benchmark_tables.
TABLED_CHECK = "every_scored_method_tabled_and_stored"
BENCHMARK_TABLES_PREFIX = "benchmark_tables"
#: Store prefix the training stage writes checkpoints under (one folder per checkpoint).
CHECKPOINT_PREFIX = "checkpoints"
#: A checkpoint folder is finished when this file exists in it (written last by training).
CHECKPOINT_MARKER = "checkpoint.json"
#: Marker fields that carry the checkpoint's hash, first found wins (else it is computed).
HASH_FIELDS: tuple[str, ...] = ("checkpoint_hash", "model_sha256", "sha256")
#: Per bench set: relative path -> sha256 and size of every file (restorations sync by it).
FILES_INDEX = "files.json"
#: Per restoration partition: which restorer, version and bench manifest made the outputs.
RUN_RECORD = "run.json"
#: ``restorations/<method>/<bench>/samples.parquet``: one row per sample and prompt kind
#: (``cotir_pipeline.evaluation.scoring.restoration_rows``), rewritten by every run.
RESTORATION_ROWS = "samples.parquet"
#: The partition's own records beside its outputs: never synced as outputs.
PARTITION_RECORDS = frozenset({RUN_RECORD, RESTORATION_ROWS})

EVALUATION_JOB = "evaluation"
REPORTING_JOB = "reporting"
NIGHTLY_SCHEDULE = "evaluation_nightly"
CHECKPOINT_SENSOR = "new_checkpoint_sensor"
REPORTING_SENSOR = "reporting_after_evaluation"
DEFAULT_NIGHTLY_CRON = "0 3 * * *"

_KEY_SEGMENT = re.compile(r"[^A-Za-z0-9._=+,@~:%-]")


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


# --------------------------------------------------------------------------------------------
# Partition keys


def evaluation_partitions(profile: Profile | str) -> dg.MultiPartitionsDefinition:
    """method (dynamic) x bench (the profile's sets)."""
    return dg.MultiPartitionsDefinition(
        {
            METHOD_DIMENSION: dg.DynamicPartitionsDefinition(name=METHODS_PARTITIONS),
            BENCH_DIMENSION: dg.StaticPartitionsDefinition(
                [spec.name for spec in bench_specs(profile)]
            ),
        }
    )


def evaluation_partition(method: str, bench: str) -> dg.MultiPartitionKey:
    """The partition key of one method on one bench set."""
    return dg.MultiPartitionKey({METHOD_DIMENSION: method, BENCH_DIMENSION: bench})


def split_evaluation_partition(key: str) -> tuple[str, str]:
    """(method, bench) of a partition key (a MultiPartitionKey or its string form)."""
    if isinstance(key, dg.MultiPartitionKey):
        dimensions = key.keys_by_dimension
    else:
        # Dimensions are joined in the order of their sorted names: bench|method.
        parts = str(key).split("|")
        if len(parts) != 2:
            raise ValueError(f"not a method x bench partition key: {key!r}")
        dimensions = dict(zip(sorted((METHOD_DIMENSION, BENCH_DIMENSION)), parts, strict=True))
    return dimensions[METHOD_DIMENSION], dimensions[BENCH_DIMENSION]


def folder_method(name: str) -> str:
    """The method name of a configured output folder: ``folder-<name>``."""
    method = FOLDER_METHOD_PREFIX + name
    if not METHOD_NAME.match(method):
        raise ValueError(
            f"output folder name {name!r} must be lower-case letters, digits, '.', '_' or '-'"
        )
    return method


def prompt_matters(method: str) -> bool:
    """Whether a method reads the instruction (built-ins ignore it: identical outputs)."""
    return method not in BUILTIN_METHODS


def ensure_builtin_methods(instance: dg.DagsterInstance, extra: Iterable[str] = ()) -> list[str]:
    """Add the built-in methods (and ``extra`` ones) as method partitions; return those added."""
    wanted = [*BUILTIN_METHODS, *extra]
    missing = [m for m in wanted if not instance.has_dynamic_partition(METHODS_PARTITIONS, m)]
    if missing:
        instance.add_dynamic_partitions(METHODS_PARTITIONS, missing)
    return missing


# --------------------------------------------------------------------------------------------
# Resource


#: Folders under COTIR_MIRROR_DIR the full profile reads when the resource names none.
MIRROR_COTIR_BENCH = "cotir_bench_test"
MIRROR_MIO100 = "mio100"
MIRROR_MIO100_DEPTH = "mio100_depth"
MIRROR_REAL_WORLD = "real_world_bench"
MIRROR_METHOD_OUTPUTS = "method_outputs"


class EvaluationResource(dg.ConfigurableResource):
    """Where the bench sets come from, how big the demo sets are, and where scoring runs."""

    profile: str = Field(default=Profile.DEMO.value, description="COTIR_PROFILE: demo or full.")
    seed: int = Field(default=0, description="Seed of every built set (and the tables' record).")
    device: str = Field(default="cpu", description="cpu, cuda or cuda:N: metrics and CoTIR.")
    cache_dir: str = Field(description="Local folder: bench sets, outputs, checkpoints.")
    demo_bench_per_recipe: int = Field(default=4, description="Demo bench: patches per recipe.")
    demo_agenticir_per_combination: int = Field(
        default=2, description="Demo AgenticIR set: test images per combination (16 of them)."
    )
    demo_seven_d_count: int = Field(default=30, description="Demo 7D subset: samples.")
    cotir_bench_dir: str | None = Field(
        default=None, description="Full: the released CoTIR-Bench test folder (test.jsonl)."
    )
    mio100_dir: str | None = Field(default=None, description="Full: MiO100 clean images.")
    mio100_depth_dir: str | None = Field(
        default=None, description="Full: MiO100 depth maps (<stem>.npy), optional."
    )
    seven_d_clean_dir: str | None = Field(
        default=None, description="Full: clean images of the 7D subset (default: mio100_dir)."
    )
    seven_d_count: int = Field(default=200, description="Full: samples of the 7D subset.")
    real_world_dir: str | None = Field(
        default=None, description="Full: real-world images (test.jsonl or <subset>/<image>)."
    )
    real_world_degradations: dict[str, str] = Field(
        default_factory=dict, description="Real-world subset folder -> degradation label."
    )
    method_folders: dict[str, str] = Field(
        default_factory=dict,
        description="Method outputs to score: name -> folder with <bench>/{vague,precise}/.",
    )
    weights_dir: str | None = Field(
        default=None, description="COTIR_WEIGHTS_DIR: base weights of full CoTIR variants."
    )
    cotir_steps: int | None = Field(
        default=None, description="Sampling steps of CoTIR restorations (default: the variant's)."
    )
    checkpoint_prefix: str = Field(
        default=CHECKPOINT_PREFIX, description="Store prefix of the training checkpoints."
    )
    evaluate_intermediate_checkpoints: bool = Field(
        default=False,
        description="Also evaluate a run's intermediate checkpoints (default: final ones only).",
    )
    torch_threads: int | None = Field(
        default=None,
        description="CPU threads torch may use while scoring and restoring with CoTIR (the "
        "demo's small images run faster on 1, and a busy machine does not stall); None: "
        "torch's default.",
    )

    @classmethod
    def from_settings(cls, settings: CotirSettings) -> Self:
        """Demo: small built-in sets. Full: folders under COTIR_MIRROR_DIR where they exist."""
        assert settings.cache_dir is not None  # the settings fill it in
        values: dict[str, Any] = {
            "profile": settings.profile.value,
            "cache_dir": str(settings.cache_dir / "evaluation"),
            "weights_dir": str(settings.weights_dir) if settings.weights_dir else None,
            "torch_threads": 1 if settings.profile is Profile.DEMO else None,
        }
        mirror = settings.mirror_dir
        if settings.profile is Profile.FULL and mirror is not None:
            for field_name, folder in (
                ("cotir_bench_dir", MIRROR_COTIR_BENCH),
                ("mio100_dir", MIRROR_MIO100),
                ("mio100_depth_dir", MIRROR_MIO100_DEPTH),
                ("real_world_dir", MIRROR_REAL_WORLD),
            ):
                if (mirror / folder).is_dir():
                    values[field_name] = str(mirror / folder)
            outputs = mirror / MIRROR_METHOD_OUTPUTS
            if outputs.is_dir():
                values["method_folders"] = {
                    p.name: str(p) for p in sorted(outputs.iterdir()) if p.is_dir()
                }
        return cls(**values)

    @property
    def cache(self) -> Path:
        """The local cache folder (created)."""
        folder = Path(self.cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def folder_methods(self) -> list[str]:
        """Method names of the configured output folders."""
        return [folder_method(name) for name in sorted(self.method_folders)]

    @contextmanager
    def torch_threads_limited(self) -> Iterator[None]:
        """Limit torch's CPU threads for the block (restored afterwards: in-process runs)."""
        if self.torch_threads is None:
            yield
            return
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def checked_device(self) -> str:
        """The configured device; a Failure naming the field when it is malformed."""
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise dg.Failure(
                description=f"evaluation.device: expected cpu, cuda or cuda:N, got {self.device!r}",
                allow_retries=False,
            )
        return self.device


# --------------------------------------------------------------------------------------------
# Files between the store and the local cache


def _local_files(root: Path) -> dict[str, Path]:
    """Every finished file below ``root`` by relative POSIX path (hidden temp files skipped)."""
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }


def _safe_name(text: str) -> str:
    """A store-key-safe file stem for ``text`` (a short hash keeps changed names unique)."""
    cleaned = _KEY_SEGMENT.sub("-", text).strip(".") or "x"
    if cleaned != text:
        cleaned = f"{cleaned[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return cleaned


class UploadReport(NamedTuple):
    """What one set or output tree upload did."""

    uploaded: int
    unchanged: int
    deleted: int


def _stored_sizes(store: ObjectStore, prefix: str) -> dict[str, int]:
    return {info.key: info.size for info in store.list(prefix + "/")}


def _upload_bench(
    store: ObjectStore, name: str, files: Mapping[str, Path], manifest: bytes, info: bytes
) -> UploadReport:
    """Upload a bench set: changed files, then ``files.json``, then ``test.jsonl`` last.

    A file whose sha256 (from the stored ``files.json``) and size are unchanged is not
    uploaded again; objects of an earlier build that are no longer part of the set are
    deleted after the new manifest is in place.
    """
    prefix = f"{BENCH_SETS_PREFIX}/{name}"
    stored = _stored_sizes(store, prefix)
    previous: dict[str, Any] = {}
    if f"{prefix}/{FILES_INDEX}" in stored:
        previous = json.loads(store.get_text(f"{prefix}/{FILES_INDEX}"))
    index: dict[str, dict[str, Any]] = {}
    uploaded = unchanged = 0
    for relative, path in sorted(files.items()):
        entry = {"sha256": file_sha256(path), "size": path.stat().st_size}
        index[relative] = entry
        key = f"{prefix}/{relative}"
        if previous.get(relative) == entry and stored.get(key) == entry["size"]:
            unchanged += 1
            continue
        store.put_file(key, path)
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
        key = f"{prefix}/{relative}"
        if relative == FILES_INDEX:
            changed = previous != index or key not in stored
        else:
            changed = previous.get(relative) != index[relative] or key not in stored
        if not changed:
            unchanged += 1
            continue
        store.put_bytes(key, data)
        uploaded += 1
    keep = {f"{prefix}/{relative}" for relative in index} | {f"{prefix}/{FILES_INDEX}"}
    stale = [key for key in stored if key not in keep]
    for key in stale:
        store.delete(key)
    return UploadReport(uploaded, unchanged, len(stale))


def _bench_missing(store: ObjectStore, name: str) -> dg.Failure:
    """A Failure that says why bench ``name`` is not in the store (from bench_sets' index)."""
    why = "materialize bench_sets first"
    index_key = f"{BENCH_SETS_PREFIX}/index.json"
    if store.exists(index_key):
        status = json.loads(store.get_text(index_key)).get(name)
        if status and status.get("status") == "n/a":
            why = f"bench_sets left it out: {status.get('reason')}"
    return dg.Failure(
        description=f"bench set {name!r} is not in the store "
        f"({store.uri(f'{BENCH_SETS_PREFIX}/{name}/{MANIFEST_NAME}')}): {why}",
        allow_retries=False,
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
    for relative, path in _local_files(root).items():
        if relative not in index:
            path.unlink()
    local_index.write_text(index_text, encoding="utf-8")
    try:
        return read_bench_set(root, name=name)
    except BenchFormatError as error:
        raise dg.Failure(description=f"bench set {name!r}: {error}", allow_retries=False) from None


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
        for relative, path in _local_files(bench.root).items()
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
    """The folder a field names; None when unset; a Failure when set but missing."""
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise dg.Failure(
            description=f"evaluation.{field_name}: {folder} is not a folder (set it to the "
            f"folder, or place the data in COTIR_MIRROR_DIR/{mirror_name})",
            allow_retries=False,
        )
    return folder


def _not_configured(spec: BenchSpec, field_name: str, mirror_name: str) -> BuiltSet:
    return BuiltSet(
        spec,
        reason=f"not configured: set evaluation.{field_name} or place the data in "
        f"COTIR_MIRROR_DIR/{mirror_name}",
    )


def _build_set(spec: BenchSpec, evaluation: EvaluationResource, work: Path) -> BuiltSet:
    """Build (or ingest) one set into ``work``; n/a with the reason when it is not configured."""
    from cotir_pipeline.evaluation import bench_sets as sets

    root = work / spec.name
    seed = evaluation.seed
    if spec.name == "demo_bench":
        return _staged(
            spec,
            sets.build_demo_bench(root, seed=seed, per_recipe=evaluation.demo_bench_per_recipe),
        )
    if spec.name == "agenticir_demo":
        bench = sets.build_demo_agenticir_set(
            root, seed=seed, per_combination=evaluation.demo_agenticir_per_combination
        )
        return _staged(spec, bench)
    if spec.name == "seven_d_demo":
        count = evaluation.demo_seven_d_count
        clean = sets.demo_clean_images(count, 128, seed)
        bench = sets.build_seven_d_subset(clean, root, count=count, seed=seed, name=spec.name)
        return _staged(spec, bench)
    if spec.name == "cotir_bench":
        folder = _configured_folder(
            evaluation.cotir_bench_dir, "cotir_bench_dir", MIRROR_COTIR_BENCH
        )
        if folder is None:
            return _not_configured(spec, "cotir_bench_dir", MIRROR_COTIR_BENCH)
        return _ingested(spec, _read(lambda: sets.read_bench_set(folder, name=spec.name)), folder)
    if spec.name == "real_world":
        folder = _configured_folder(evaluation.real_world_dir, "real_world_dir", MIRROR_REAL_WORLD)
        if folder is None:
            return _not_configured(spec, "real_world_dir", MIRROR_REAL_WORLD)
        bench = _read(
            lambda: sets.read_real_world_set(
                folder,
                name=spec.name,
                degradation_of_subset=evaluation.real_world_degradations,
                seed=seed,
            )
        )
        return _ingested(spec, bench, folder)
    if spec.name in ("agenticir", "seven_d"):
        field_name = "mio100_dir" if spec.name == "agenticir" else "seven_d_clean_dir"
        value = evaluation.mio100_dir
        if spec.name == "seven_d" and evaluation.seven_d_clean_dir:
            value = evaluation.seven_d_clean_dir
        folder = _configured_folder(value, field_name, MIRROR_MIO100)
        if folder is None:
            return _not_configured(spec, field_name, MIRROR_MIO100)
        depth = _configured_folder(
            evaluation.mio100_depth_dir, "mio100_depth_dir", MIRROR_MIO100_DEPTH
        )
        try:
            clean = sets.clean_images_from_folder(folder, depth_folder=depth)
            if spec.name == "agenticir":
                bench = sets.build_agenticir_set(clean, root, seed=seed, name=spec.name)
            else:
                bench = sets.build_seven_d_subset(
                    clean, root, count=evaluation.seven_d_count, seed=seed, name=spec.name
                )
        except (ValueError, FileNotFoundError) as error:
            raise dg.Failure(
                description=f"evaluation.{field_name} ({folder}): {error}", allow_retries=False
            ) from None
        return _staged(spec, bench)
    raise KeyError(f"no builder for bench set {spec.name!r}")


def _read(reader: Callable[[], BenchSet]) -> BenchSet:
    try:
        return reader()
    except BenchFormatError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


# --------------------------------------------------------------------------------------------
# Checkpoints in the store


@dataclass(frozen=True)
class CheckpointRef:
    """A finished checkpoint folder in the store and its content hash."""

    folder: str
    hash: str
    marker: Mapping[str, Any]
    files: tuple[ObjectInfo, ...]

    @property
    def method(self) -> str:
        """Its method partition (:func:`checkpoint_method`)."""
        return checkpoint_method(self.marker, self.hash)

    @property
    def final(self) -> bool:
        """Whether this is the last checkpoint of its run (markers without the field: yes)."""
        return bool(self.marker.get("final", True))


def find_checkpoints(store: ObjectStore, prefix: str = CHECKPOINT_PREFIX) -> list[CheckpointRef]:
    """Every folder under ``prefix`` whose :data:`CHECKPOINT_MARKER` exists, with its hash.

    The hash is the marker's first :data:`HASH_FIELDS` entry (the training stage writes
    ``model_sha256``: the same weights give the same method), else sha256 over the
    marker's bytes and the (name, size) list of the folder's files. Markers nested
    below another checkpoint folder are checkpoints of their own.
    """
    objects = list(store.list(prefix.rstrip("/") + "/"))
    folders = sorted(
        info.key.rsplit("/", 1)[0]
        for info in objects
        if info.key.rsplit("/", 1)[-1] == CHECKPOINT_MARKER and "/" in info.key
    )
    found = []
    for folder in folders:
        nested = [other for other in folders if other.startswith(folder + "/")]
        files = [
            info
            for info in objects
            if info.key.startswith(folder + "/")
            and not any(info.key.startswith(other + "/") for other in nested)
        ]
        raw = store.get_bytes(f"{folder}/{CHECKPOINT_MARKER}")
        try:
            marker = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            marker = {}
        if not isinstance(marker, dict):
            marker = {}
        declared = next(
            (str(marker[k]).lower() for k in HASH_FIELDS if isinstance(marker.get(k), str)), ""
        )
        if re.fullmatch(r"[0-9a-f]{12,}", declared):
            digest = declared
        else:
            hasher = hashlib.sha256(raw)
            for info in files:
                hasher.update(f"\n{info.key[len(folder) + 1 :]}:{info.size}".encode())
            digest = hasher.hexdigest()
        found.append(CheckpointRef(folder, digest, marker, tuple(files)))
    return found


def _checkpoint_for(store: ObjectStore, method: str, prefix: str) -> CheckpointRef:
    matches = [ref for ref in find_checkpoints(store, prefix) if ref.method == method]
    if not matches:
        raise dg.Failure(
            description=f"{method}: no finished checkpoint (a folder with {CHECKPOINT_MARKER}) "
            f"under {store.uri(prefix)} has this hash; it was removed or re-saved",
            allow_retries=False,
        )
    return matches[0]


def model_subfolder(ref: CheckpointRef) -> str:
    """The part of a checkpoint ``from_pretrained`` loads ("" for the folder itself).

    The marker's ``model_dir`` when given; else the folder itself when it holds
    ``cotir.json`` (ours) or ``cot_adapter.pt`` (the release); else its one
    sub-folder that does (the training stage's ``model/``). Only that part is
    downloaded, never the optimizer state beside it.
    """
    from models.checkpoint_io import META_FILE, RELEASE_ADAPTER_FILE

    relative = {info.key[len(ref.folder) + 1 :] for info in ref.files}
    named = ref.marker.get("model_dir")
    if isinstance(named, str) and named.strip("/"):
        return named.strip("/")
    holders = sorted(
        {
            name.rsplit("/", 1)[0] if "/" in name else ""
            for name in relative
            if name.rsplit("/", 1)[-1] in (META_FILE, RELEASE_ADAPTER_FILE)
        }
    )
    if "" in holders:
        return ""
    if len(holders) == 1:
        return holders[0]
    raise dg.Failure(
        description=f"checkpoint {ref.folder}: expected one folder with {META_FILE} or "
        f"{RELEASE_ADAPTER_FILE}, found {holders or 'none'} (or name it as model_dir in "
        f"{CHECKPOINT_MARKER})",
        allow_retries=False,
    )


# --------------------------------------------------------------------------------------------
# Restorers by method


@dataclass
class MethodRun:
    """A method's restorer per prompt kind and what the tables record about it."""

    method: str
    restorers: dict[str, Any]
    version: str
    parameters: int | None = None
    steps: int | None = None
    checkpoint_hash: str | None = None


def _make_method(
    method: str,
    spec: BenchSpec,
    store: ObjectStore,
    evaluation: EvaluationResource,
    log: Callable[[str], None],
) -> MethodRun:
    """The restorer(s) of ``method`` for bench ``spec`` (CoTIR loads the stored checkpoint)."""
    from cotir_pipeline.evaluation.restorers import (
        FolderRestorer,
        IdentityRestorer,
        SequentialToolChain,
    )

    if method == IDENTITY:
        restorer = IdentityRestorer(name=IDENTITY)
        return MethodRun(method, dict.fromkeys(PROMPT_KINDS, restorer), restorer.version)
    if method == CLASSICAL_CHAIN:
        chain = SequentialToolChain(order="label", sr_factor=spec.sr_factor, name=CLASSICAL_CHAIN)
        return MethodRun(method, dict.fromkeys(PROMPT_KINDS, chain), chain.version)
    if method.startswith(FOLDER_METHOD_PREFIX):
        name = method.removeprefix(FOLDER_METHOD_PREFIX)
        if name not in evaluation.method_folders:
            raise dg.Failure(
                description=f"{method}: evaluation.method_folders has no entry {name!r}",
                allow_retries=False,
            )
        root = Path(evaluation.method_folders[name]) / spec.name
        try:
            restorers = {
                kind: FolderRestorer.for_release(root, kind, method) for kind in PROMPT_KINDS
            }
        except FileNotFoundError as error:
            raise dg.Failure(
                description=f"{error} (evaluation.method_folders[{name!r}] must hold "
                f"<bench>/vague/ and <bench>/precise/)",
                allow_retries=False,
            ) from None
        return MethodRun(method, dict(restorers), f"precomputed:{root}")
    if method.startswith(COTIR_METHOD_PREFIX):
        return _cotir_method(method, store, evaluation, log)
    raise dg.Failure(
        description=f"unknown method {method!r}: expected {', '.join(BUILTIN_METHODS)}, "
        f"{COTIR_METHOD_PREFIX}<hash> or {FOLDER_METHOD_PREFIX}<name>",
        allow_retries=False,
    )


def _cotir_method(
    method: str, store: ObjectStore, evaluation: EvaluationResource, log: Callable[[str], None]
) -> MethodRun:
    from cotir_pipeline.weights import MissingWeightsError
    from models.restore import CoTIRRestorer

    ref = _checkpoint_for(store, method, evaluation.checkpoint_prefix)
    local = evaluation.cache / "checkpoints" / ref.hash[:METHOD_HASH_LENGTH]
    sub = model_subfolder(ref)
    model_prefix = f"{ref.folder}/{sub}/" if sub else f"{ref.folder}/"
    for info in ref.files:
        if not info.key.startswith(model_prefix):
            continue
        path = local / info.key[len(ref.folder) + 1 :]
        if not path.is_file() or path.stat().st_size != info.size:
            store.download_file(info.key, path)
    folder = local / sub if sub else local
    variant = ref.marker.get("variant")
    settings = None
    if evaluation.weights_dir:
        settings = CotirSettings(home=evaluation.cache, weights_dir=Path(evaluation.weights_dir))
    log(f"{method}: loading {store.uri(ref.folder)} on {evaluation.checked_device()}")
    try:
        model = CoTIRRestorer.from_pretrained(
            folder,
            variant=variant if isinstance(variant, str) and variant else None,
            settings=settings,
            device=evaluation.checked_device(),
        )
    except (MissingWeightsError, ValueError) as error:
        raise dg.Failure(description=f"{method}: {error}", allow_retries=False) from None
    restorer = model.for_evaluation(name=method, version=ref.hash, steps=evaluation.cotir_steps)
    parameters = sum(p.numel() for p in model.model.parameters())
    return MethodRun(
        method,
        dict.fromkeys(PROMPT_KINDS, restorer),
        ref.hash,
        parameters=int(parameters),
        steps=evaluation.cotir_steps or model.variant.steps,
        checkpoint_hash=ref.hash,
    )


# --------------------------------------------------------------------------------------------
# Metadata helpers


def _png_md(png: bytes, caption: str) -> dg.MetadataValue:
    encoded = base64.b64encode(png).decode("ascii")
    return dg.MetadataValue.md(f"{caption}\n\n![{caption}](data:image/png;base64,{encoded})")


def _image_md(path: Path, caption: str, *, max_width: int) -> dg.MetadataValue:
    """An image inline in Markdown metadata, scaled down to ``max_width`` pixels so it fits
    the UI's metadata dialog (the stored file keeps its full size), as JPEG to keep the
    event log small."""
    import io

    from PIL import Image

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


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pick_ids(bench: BenchSet, count: int) -> list[str]:
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


def _score_summary(rows: Sequence[ScoreRow]) -> list[tuple[str, str, float | None, int, str]]:
    """(metric, prompt, mean or None, images, reason): no mean over a partial set."""
    grouped: dict[tuple[str, str], list[ScoreRow]] = defaultdict(list)
    for row in rows:
        grouped[(row.metric, row.prompt_kind)].append(row)
    summary = []
    for (metric, kind), items in grouped.items():
        missing = [row for row in items if row.value is None]
        if missing:
            reasons = sorted({row.reason or "no value" for row in missing})
            prefix = "" if len(missing) == len(items) else f"{len(missing)} of {len(items)}: "
            summary.append((metric, kind, None, len(items), prefix + "; ".join(reasons[:3])))
        else:
            mean = sum(row.value for row in items if row.value is not None) / len(items)
            summary.append((metric, kind, mean, len(items), ""))
    return summary


# --------------------------------------------------------------------------------------------
# Assets


class EvaluationAssets(NamedTuple):
    """The four evaluation assets."""

    bench_sets: dg.AssetsDefinition
    restorations: dg.AssetsDefinition
    metric_scores: dg.AssetsDefinition
    benchmark_tables: dg.AssetsDefinition


def build_evaluation_assets(
    settings: CotirSettings,
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
    *,
    checkpoints: Sequence[dg.AssetKey] = (),
) -> EvaluationAssets:
    """The evaluation assets of the settings' profile (its bench sets are the bench partitions).

    ``checkpoints`` are the training assets whose checkpoints become evaluation methods:
    ``restorations`` depends on them, so the graph shows evaluation downstream of training.
    """
    profile = settings.profile
    specs = bench_specs(profile)
    partitions = evaluation_partitions(profile)

    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"jsonl", "png"},
        op_tags=op_tags("bench_sets"),
        description="Every bench set of the profile in the public test format (test.jsonl, "
        "lq/, hq/) under `bench_sets/<name>/`; a set whose source is not configured is n/a.",
        check_specs=[
            dg.AssetCheckSpec(
                BENCH_IDS_CHECK,
                asset="bench_sets",
                description="Every built set has samples, and each sample one lineage id of "
                "its own (no two records share a content hash).",
            )
        ],
    )
    def bench_sets(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Build each set locally (seeded, deterministic) and upload only changed files."""
        object_store = store.open()
        status: dict[str, dict[str, Any]] = {}
        subset_rows: list[tuple[str, str, int]] = []
        totals = Counter[str]()
        id_problems: list[str] = []
        with tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".build-") as work:
            for spec in specs:
                built = _build_set(spec, evaluation, Path(work))
                if built.bench is None or built.files is None:
                    status[spec.name] = {"status": "n/a", "reason": built.reason}
                    context.log.warning(f"{spec.name}: n/a ({built.reason})")
                    continue
                # The per-sample lineage rows travel with the set's files.
                rows = bench_lineage_rows(built.bench)
                lineage = write_bench_lineage(
                    rows, Path(work) / f"{spec.name}-{LINEAGE_MANIFEST_NAME}"
                )
                ids = {row["sample_id"] for row in rows}
                if len(built.bench) == 0 or len(ids) != len(built.bench):
                    id_problems.append(spec.name)
                files = {**built.files, LINEAGE_MANIFEST_NAME: lineage}
                report = _upload_bench(object_store, spec.name, files, built.manifest, built.info)
                totals.update(report._asdict())
                subsets = Counter(record.subset for record in built.bench.records)
                subset_rows += [(spec.name, s, n) for s, n in sorted(subsets.items())]
                status[spec.name] = {
                    "status": "ok",
                    "samples": len(built.bench),
                    "has_reference": built.bench.has_reference,
                    "manifest_sha256": hashlib.sha256(built.manifest).hexdigest(),
                    **report._asdict(),
                }
                context.log.info(f"{spec.name}: {len(built.bench)} samples, {report}")
        object_store.put_text(
            f"{BENCH_SETS_PREFIX}/index.json", json.dumps(status, indent=2, sort_keys=True)
        )
        metadata: dict[str, Any] = {
            "sets": dg.MetadataValue.md(
                _md_table(
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
                _md_table(("set", "subset", "samples"), subset_rows) if subset_rows else "none"
            ),
            "objects_uploaded": totals["uploaded"],
            "objects_unchanged": totals["unchanged"],
            "objects_deleted": totals["deleted"],
            "uri": dg.MetadataValue.url(object_store.uri(f"{BENCH_SETS_PREFIX}/index.json")),
        }
        for name, entry in status.items():
            metadata[f"samples/{name}"] = entry.get("samples", 0)
        # The per-sample lineage manifests (one per built set): columns and total rows.
        metadata.update(
            parquet_output_metadata(
                bench_lineage_schema(), sum(entry.get("samples", 0) for entry in status.values())
            )
        )
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=BENCH_IDS_CHECK,
                    passed=not id_problems,
                    metadata={"sets_with_problems": dg.MetadataValue.json(id_problems)},
                )
            ],
        )

    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"png"},
        partitions_def=partitions,
        deps=[bench_sets, *checkpoints],
        op_tags=op_tags("restorations"),
        description="A method's outputs on a bench set for both prompts (vague/, precise/) "
        "with per-image runtime logs, under `restorations/<method>/<bench>/`.",
        check_specs=[
            dg.AssetCheckSpec(
                "every_sample_restored",
                asset="restorations",
                description="Every sample of the set has an output for both prompts.",
            )
        ],
    )
    def restorations(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Run the method's restorer over the bench set (resumable) and upload the outputs."""
        method, bench_name = split_evaluation_partition(context.partition_key)
        spec = bench_spec(bench_name, profile)
        object_store = store.open()
        bench = local_bench(object_store, bench_name, evaluation.cache)
        uses_torch = method.startswith(COTIR_METHOD_PREFIX)
        threads = evaluation.torch_threads_limited() if uses_torch else nullcontext()
        with threads:
            return _restore_partition(context, object_store, evaluation, method, spec, bench)

    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"parquet"},
        partitions_def=partitions,
        deps=[restorations],
        op_tags=op_tags("metric_scores"),
        description="One row per image and metric of the bench's metric set (value or n/a with "
        "the reason) in `metric_scores/<method>/<bench>.parquet`, and the runtimes.",
        check_specs=[
            dg.AssetCheckSpec(
                SCORED_CHECK,
                asset="metric_scores",
                description="Every sample of the set has a row for both prompts and every "
                "metric, and every n/a value carries its reason.",
            )
        ],
    )
    def metric_scores(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Score the stored outputs of one method on one bench set."""
        with evaluation.torch_threads_limited():
            return _score_partition(context, store.open(), evaluation, profile)

    @dg.asset(
        group_name=EVALUATION_GROUP,
        kinds={"parquet", "html", "markdown"},
        deps=[metric_scores],
        op_tags=op_tags("benchmark_tables"),
        description="The paper's Tables II, III, IV, V, VI and VIII from every score row in the "
        "store (Parquet, Markdown, HTML), with image grids and charts, beside the paper's "
        "reported rows. Fresh when the nightly evaluation's reporting ran in the last day.",
        # The nightly schedule re-scores every method and the reporting sensor rebuilds the
        # tables after it: tables older than a day (and a few hours) mean it did not finish.
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=datetime.timedelta(hours=30), warn_window=datetime.timedelta(hours=26)
        ),
        check_specs=[
            dg.AssetCheckSpec(
                TABLED_CHECK,
                asset="benchmark_tables",
                description="Every method with score rows on a table's bench set has rows in "
                "that table, and every written file reads back from the store.",
            )
        ],
    )
    def benchmark_tables(
        context: dg.AssetExecutionContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.MaterializeResult:
        """Regenerate every table from the stored scores and replace benchmark_tables/."""
        object_store = store.open()
        with tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".tables-") as work:
            metadata, check = _write_tables(
                object_store, evaluation, specs, Path(work), context.log.info
            )
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    return EvaluationAssets(bench_sets, restorations, metric_scores, benchmark_tables)


def _restore_partition(
    context: dg.AssetExecutionContext,
    object_store: ObjectStore,
    evaluation: EvaluationResource,
    method: str,
    spec: BenchSpec,
    bench: BenchSet,
) -> dg.MaterializeResult:
    """restorations for one partition: resume, run both prompts, upload, report."""
    from cotir_pipeline.evaluation.restorers import run_restorer
    from cotir_pipeline.evaluation.scoring import (
        restoration_row_schema,
        restoration_rows,
        write_restoration_rows,
    )
    from cotir_pipeline.evaluation.tables import image_grid

    bench_name = spec.name
    run = _make_method(method, spec, object_store, evaluation, context.log.info)
    prefix = f"{RESTORATIONS_PREFIX}/{method}/{bench_name}"
    out_dir = evaluation.cache / RESTORATIONS_PREFIX / method / bench_name
    identity = {
        "method": method,
        "bench": bench_name,
        "version": run.version,
        "bench_manifest_sha256": manifest_digest(bench),
    }
    _reset_if_stale(object_store, prefix, out_dir, identity, context.log.info)
    _download_missing(object_store, prefix, out_dir)
    summaries = {}
    for kind in PROMPT_KINDS:
        summaries[kind] = run_restorer(run.restorers[kind], bench, out_dir, kind)
        context.log.info(
            f"{kind}: {summaries[kind].written} written, {summaries[kind].skipped} already "
            f"there, {len(summaries[kind].failed)} failed"
        )
    report = _upload_outputs(object_store, prefix, out_dir)
    record = {
        **identity,
        "parameters": run.parameters,
        "steps": run.steps,
        "checkpoint_hash": run.checkpoint_hash,
        "samples": len(bench),
    }
    object_store.put_text(f"{prefix}/{RUN_RECORD}", json.dumps(record, indent=2))
    # Per-sample rows (lineage's restoration step): status, output digest, runtime.
    rows = restoration_rows(bench, out_dir, method=method, checkpoint=run.checkpoint_hash)
    with tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".rows-") as work:
        written = write_restoration_rows(rows, Path(work) / RESTORATION_ROWS)
        object_store.put_file(f"{prefix}/{RESTORATION_ROWS}", written)
    failures = [(k, sid, why) for k, s in summaries.items() for sid, why in s.failed]
    if failures and all(s.written + s.skipped == 0 for s in summaries.values()):
        raise dg.Failure(
            description=f"{method} on {bench_name}: every sample failed, e.g. "
            f"{failures[0][1]}: {failures[0][2]}",
            allow_retries=False,
        )
    metadata: dict[str, Any] = {
        "restorer_version": run.version,
        "samples": len(bench),
        # Labels of foreign sets that no known spelling matches: once per label, counted.
        "unknown_degradation_labels": dg.MetadataValue.json(unknown_labels(bench.records)),
        "objects_uploaded": report.uploaded,
        "failures": dg.MetadataValue.md(
            _md_table(("prompt", "sample", "reason"), failures[:20]) if failures else "none"
        ),
        "uri": dg.MetadataValue.url(object_store.uri(prefix)),
    }
    for kind, summary in summaries.items():
        metadata[f"written/{kind}"] = summary.written
        metadata[f"skipped/{kind}"] = summary.skipped
        metadata[f"failed/{kind}"] = len(summary.failed)
    if run.checkpoint_hash:
        metadata["checkpoint_hash"] = run.checkpoint_hash
    metadata["sample_rows"] = dg.MetadataValue.url(object_store.uri(f"{prefix}/{RESTORATION_ROWS}"))
    metadata.update(parquet_output_metadata(restoration_row_schema(), len(rows)))
    with tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".grid-") as work:
        grid = image_grid(
            bench,
            {kind: out_dir / kind for kind in PROMPT_KINDS},
            Path(work) / "grid.png",
            sample_ids=_pick_ids(bench, 3),
            tile=128,
        )
        metadata["preview"] = _png_md(grid.read_bytes(), "LQ | vague | precise | HQ")
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="every_sample_restored",
                passed=not failures,
                metadata={"failed": len(failures), "samples": len(bench)},
            )
        ],
    )


def _score_partition(
    context: dg.AssetExecutionContext,
    object_store: ObjectStore,
    evaluation: EvaluationResource,
    profile: Profile,
) -> dg.MaterializeResult:
    """metric_scores for one partition: the stored outputs, scored, as Parquet rows."""
    from cotir_pipeline.evaluation.metrics import METRIC_SETS
    from cotir_pipeline.evaluation.scoring import (
        evaluate_outputs,
        runtime_rows,
        score_row_schema,
        write_rows,
        write_sample_rows,
    )

    method, bench_name = split_evaluation_partition(context.partition_key)
    spec = bench_spec(bench_name, profile)
    device = evaluation.checked_device()
    bench = local_bench(object_store, bench_name, evaluation.cache)
    prefix = f"{RESTORATIONS_PREFIX}/{method}/{bench_name}"
    if not object_store.exists(f"{prefix}/{RUN_RECORD}"):
        raise dg.Failure(
            description=f"no restorations of {method} on {bench_name} in the store "
            f"({object_store.uri(prefix)}): materialize restorations first",
            allow_retries=False,
        )
    out_dir = evaluation.cache / RESTORATIONS_PREFIX / method / bench_name
    _mirror_outputs(object_store, prefix, out_dir)
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
        runtimes += runtime_rows(out_dir, method=method, bench=bench_name, prompt_kind=kind)
    key = f"{METRIC_SCORES_PREFIX}/{method}/{bench_name}.parquet"
    runtime_key = f"{METRIC_SCORES_PREFIX}/{method}/{bench_name}.runtime.parquet"
    samples_key = stage_file_key("evaluation", method, bench_name)
    run_record = json.loads(object_store.get_text(f"{prefix}/{RUN_RECORD}"))
    with tempfile.TemporaryDirectory(dir=evaluation.cache, prefix=".scores-") as work:
        object_store.put_file(key, write_rows(rows, Path(work) / "scores.parquet"))
        samples = write_sample_rows(
            bench,
            rows,
            out_dir,
            checkpoint=run_record.get("checkpoint_hash"),
            destination=Path(work) / "samples.parquet",
        )
        object_store.put_file(samples_key, samples)
        if runtimes:
            path = write_rows(runtimes, Path(work) / "runtime.parquet")
            object_store.put_file(runtime_key, path)
        else:
            object_store.delete(runtime_key)
    summary = _score_summary(rows)
    metadata: dict[str, Any] = {
        "metric_set": spec.metric_set,
        "device": device,
        "rows": len(rows),
        "means": dg.MetadataValue.md(
            _md_table(
                ("metric", "prompt", "mean", "images", "n/a reason"),
                ((m, k, "n/a" if v is None else f"{v:.4f}", n, why) for m, k, v, n, why in summary),
            )
        ),
        "uri": dg.MetadataValue.url(object_store.uri(key)),
    }
    not_available = {}
    for metric, kind, value, _, why in summary:
        if value is None:
            not_available[f"{metric}/{kind}"] = why
        else:
            metadata[f"{metric}/{kind}"] = dg.MetadataValue.float(value)
    metadata["not_available"] = dg.MetadataValue.json(not_available)
    if runtimes:
        metadata["seconds_per_image"] = dg.MetadataValue.float(
            sum(r.seconds for r in runtimes) / len(runtimes)
        )
    metadata.update(parquet_output_metadata(score_row_schema(), len(rows)))
    return dg.MaterializeResult(metadata=metadata, check_results=[_scored_check(bench, rows)])


def _scored_check(bench: BenchSet, rows: Sequence[ScoreRow]) -> dg.AssetCheckResult:
    """Every sample has a row per prompt and metric, and every missing value says why."""
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
    return dg.AssetCheckResult(
        check_name=SCORED_CHECK,
        passed=not missing and not unexplained,
        metadata={
            "missing_rows": len(missing),
            "missing_example": str(missing[0]) if missing else "",
            "values_without_reason": len(unexplained),
        },
    )


def _reset_if_stale(
    store: ObjectStore,
    prefix: str,
    out_dir: Path,
    identity: Mapping[str, Any],
    log: Callable[[str], None],
) -> None:
    """Drop outputs made by another restorer version or for another build of the set."""

    def same(record: Mapping[str, Any]) -> bool:
        return all(record.get(key) == value for key, value in identity.items())

    key = f"{prefix}/{RUN_RECORD}"
    if store.exists(key) and not same(json.loads(store.get_text(key))):
        log(f"{prefix}: outputs of another restorer version or bench build: redoing them")
        store.delete_prefix(prefix + "/")
        shutil.rmtree(out_dir, ignore_errors=True)
    local = out_dir / RUN_RECORD
    if local.is_file() and not same(json.loads(local.read_text(encoding="utf-8"))):
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(dict(identity), indent=2), encoding="utf-8")


def _download_missing(store: ObjectStore, prefix: str, out_dir: Path) -> None:
    """Fetch stored outputs and logs the cache lacks (a run resumed on another machine)."""
    for info in store.list(prefix + "/"):
        relative = info.key[len(prefix) + 1 :]
        if relative in PARTITION_RECORDS:
            continue
        path = out_dir / relative
        if not path.is_file():
            store.download_file(info.key, path)


def _upload_outputs(store: ObjectStore, prefix: str, out_dir: Path) -> UploadReport:
    """Upload outputs and runtime logs that the store lacks or holds in another size."""
    stored = _stored_sizes(store, prefix)
    uploaded = unchanged = 0
    for relative, path in _local_files(out_dir).items():
        if relative in PARTITION_RECORDS:
            continue
        key = f"{prefix}/{relative}"
        if stored.get(key) == path.stat().st_size:
            unchanged += 1
            continue
        store.put_file(key, path)
        uploaded += 1
    return UploadReport(uploaded, unchanged, 0)


def _mirror_outputs(store: ObjectStore, prefix: str, out_dir: Path) -> None:
    """Make the cached outputs exactly the stored ones, so scores describe the store."""
    stored = _stored_sizes(store, prefix)
    wanted = {key[len(prefix) + 1 :]: size for key, size in stored.items()}
    for relative, path in _local_files(out_dir).items():
        if relative not in wanted and relative not in PARTITION_RECORDS:
            path.unlink()
    for relative, size in wanted.items():
        path = out_dir / relative
        if relative not in PARTITION_RECORDS and (
            not path.is_file() or path.stat().st_size != size
        ):
            store.download_file(f"{prefix}/{relative}", path)


# --------------------------------------------------------------------------------------------
# Tables


def _stored_rows(store: ObjectStore, work: Path) -> tuple[list[ScoreRow], list[RuntimeRow]]:
    """Every score and runtime row under metric_scores/ (one Parquet file per partition)."""
    from cotir_pipeline.evaluation.scoring import read_runtime_rows, read_score_rows

    scores: list[ScoreRow] = []
    runtimes: list[RuntimeRow] = []
    for number, info in enumerate(store.list(METRIC_SCORES_PREFIX + "/")):
        if not info.key.endswith(".parquet"):
            continue
        path = work / "rows" / f"{number}.parquet"
        store.download_file(info.key, path)
        if info.key.endswith(".runtime.parquet"):
            runtimes += read_runtime_rows(path)
        elif not info.key.endswith(SAMPLE_ROWS_SUFFIX):
            scores += read_score_rows(path)
    return scores, runtimes


def _run_records(store: ObjectStore) -> dict[str, dict[str, Any]]:
    """The run record of each method (parameters, steps, checkpoint hash), any bench."""
    records: dict[str, dict[str, Any]] = {}
    for info in store.list(RESTORATIONS_PREFIX + "/"):
        if info.key.endswith("/" + RUN_RECORD):
            record = json.loads(store.get_text(info.key))
            records.setdefault(str(record.get("method")), record)
    return records


def _grid(
    store: ObjectStore,
    evaluation: EvaluationResource,
    bench_name: str,
    methods: Sequence[str],
    out_path: Path,
    work: Path,
) -> tuple[Path, list[str]]:
    """LQ | each method's output | HQ for one sample per degradation (4 rows); the grid
    and its column titles."""
    from cotir_pipeline.evaluation.tables import image_grid

    bench = local_bench(store, bench_name, evaluation.cache)
    ids = _pick_ids(bench, 4)
    columns: dict[str, Path] = {}
    for method in methods:
        kinds: tuple[PromptKind, ...] = PROMPT_KINDS if prompt_matters(method) else ("precise",)
        for kind in kinds:
            folder = work / "grid" / bench_name / method / kind
            folder.mkdir(parents=True, exist_ok=True)
            for sample_id in ids:
                name = bench.get(sample_id).output_name
                key = f"{RESTORATIONS_PREFIX}/{method}/{bench_name}/{kind}/{name}"
                if store.exists(key):
                    store.download_file(key, folder / name)
            title = f"{method} ({kind})" if prompt_matters(method) else method
            columns[title] = folder
    grid = image_grid(bench, columns, out_path, sample_ids=ids, tile=128)
    return grid, ["LQ", *columns, "HQ"]


def _write_tables(
    store: ObjectStore,
    evaluation: EvaluationResource,
    specs: Sequence[BenchSpec],
    work: Path,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dg.AssetCheckResult]:
    """Build all tables, grids and charts in ``work``, upload them; return the metadata and
    the asset check's result."""
    from cotir_pipeline.evaluation import tables as t

    scores, runtimes = _stored_rows(store, work)
    records = _run_records(store)
    known = {spec.name for spec in specs}
    ignored = sorted({row.bench for row in scores} - known)
    if ignored:
        log(f"score rows of bench sets outside this profile are left out: {ignored}")
    hashes = {
        method: str(record["checkpoint_hash"])
        for method, record in records.items()
        if record.get("checkpoint_hash")
    }
    provenance = t.table_provenance(
        evaluation.seed,
        checkpoint_hashes=hashes,
        settings={
            "profile": evaluation.profile,
            "device": evaluation.device,
            "benches": [spec.name for spec in specs],
            "seed": evaluation.seed,
        },
    )

    def bench_of(kind: str) -> BenchSpec | None:
        return next((spec for spec in specs if spec.kind == kind), None)

    def rows_of(spec: BenchSpec | None) -> list[ScoreRow]:
        return [row for row in scores if spec is not None and row.bench == spec.name]

    def times_of(spec: BenchSpec | None) -> list[RuntimeRow]:
        return [row for row in runtimes if spec is not None and row.bench == spec.name]

    main, agentic, seven, real = (
        bench_of(kind) for kind in ("cotir_bench", "agenticir", "seven_d", "real_world")
    )
    method_names = sorted(
        {row.method for row in times_of(main)}, key=lambda m: (prompt_matters(m), m)
    )
    infos = [
        t.MethodInfo(
            name,
            parameters=records.get(name, {}).get("parameters"),
            steps=records.get(name, {}).get("steps"),
        )
        for name in method_names
    ]
    built = [
        (t.table_ii_overall(rows_of(main), provenance), main),
        (t.table_iii_per_task(rows_of(main), provenance), main),
        (t.table_iv_seven_d(rows_of(seven), times_of(seven), provenance), seven),
        (t.table_v_agenticir(rows_of(agentic), provenance), agentic),
        (t.table_vi_real_world(rows_of(real), provenance), real),
        (t.table_viii_runtime(infos, times_of(main), provenance), main),
    ]
    out = work / "out"
    markdown: dict[str, str] = {}
    for table, spec in built:
        if spec is None:
            table.notes.append(f"The {evaluation.profile} profile has no set for this table.")
        else:
            table.notes.append(f"Our rows: bench set '{spec.name}', {spec.description}.")
            if not rows_of(spec) and not times_of(spec):
                table.notes.append(f"No scores of '{spec.name}' in the store yet.")
        paths = t.write_table(table, out)
        markdown[table.key] = paths["markdown"].read_text(encoding="utf-8")
    charts = {}
    for table, _ in built:
        column = t.RUNTIME.key if table.key == "VIII" else "psnr"
        if any(c.key == column for c in table.columns):
            chart = t.bar_chart(table, column, out / f"chart_{table.key.lower()}_{column}.png")
            charts[table.key] = chart.name if chart else "n/a: matplotlib is not installed"
    grids: dict[str, tuple[Path, list[str]]] = {}
    for spec in specs:
        methods = sorted(
            {row.method for row in rows_of(spec)}, key=lambda m: (prompt_matters(m), m)
        )
        if methods:
            grids[spec.name] = _grid(
                store, evaluation, spec.name, methods, out / f"grid_{spec.name}.png", work
            )
    index = ["# Benchmark tables", ""]
    index += [f"![{name}](grid_{name}.png)" for name in grids]
    index += ["", *markdown.values()]
    (out / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    (out / "provenance.json").write_text(
        json.dumps(provenance, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
    files = _local_files(out)
    stale = [
        info.key
        for info in store.list(BENCHMARK_TABLES_PREFIX + "/")
        if info.key[len(BENCHMARK_TABLES_PREFIX) + 1 :] not in files
    ]
    for relative, path in files.items():
        store.put_file(f"{BENCHMARK_TABLES_PREFIX}/{relative}", path)
    for key in stale:
        store.delete(key)
    untabled = {
        table.key: sorted(
            method
            for method in {row.method for row in rows_of(spec)}
            if f"| {method} |" not in markdown[table.key]
        )
        for table, spec in built
        if spec is not None and table.key != "VIII"  # VIII lists runtimes, not scores
    }
    unreadable = [name for name in files if not store.exists(f"{BENCHMARK_TABLES_PREFIX}/{name}")]
    check = dg.AssetCheckResult(
        check_name=TABLED_CHECK,
        passed=not any(untabled.values()) and not unreadable,
        metadata={
            "methods_missing_per_table": dg.MetadataValue.json(
                {key: methods for key, methods in untabled.items() if methods}
            ),
            "files_not_in_store": dg.MetadataValue.json(unreadable),
        },
    )
    metadata: dict[str, Any] = {
        # Every table, chart and grid is viewable on the asset page, not only by name.
        **{f"table_{key.lower()}": dg.MetadataValue.md(text) for key, text in markdown.items()},
        **{
            f"chart_{key.lower()}": _image_md(out / name, f"Table {key}", max_width=900)
            for key, name in charts.items()
            if (out / name).is_file()
        },
        **{
            f"grid_{name}": _image_md(path, f"{name}: {' | '.join(titles)}", max_width=900)
            for name, (path, titles) in grids.items()
        },
        "score_rows": dg.MetadataValue.json(dict(Counter(row.bench for row in scores))),
        "methods": dg.MetadataValue.json(sorted({row.method for row in scores})),
        "files": dg.MetadataValue.json(sorted(files)),
        "charts": dg.MetadataValue.json(charts),
        "uri": dg.MetadataValue.url(store.uri(f"{BENCHMARK_TABLES_PREFIX}/index.md")),
    }
    return metadata, check


# --------------------------------------------------------------------------------------------
# Jobs, schedule, sensors


#: What ``dg.define_asset_job`` returns (its class is not part of Dagster's public API).
AssetJob = Any

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def available_benches(store: ObjectStore, benches: Sequence[str]) -> list[str]:
    """The benches bench_sets built (all of them before it has run: those runs fail clearly)."""
    key = f"{BENCH_SETS_PREFIX}/index.json"
    if not store.exists(key):
        return list(benches)
    status = json.loads(store.get_text(key))
    return [name for name in benches if status.get(name, {}).get("status") == "ok"]


def _latest_storage_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else 0


def evaluated_partitions(instance: dg.DagsterInstance, scores_key: dg.AssetKey) -> set[str]:
    """The method x bench partitions whose scores are already materialized."""
    return {str(key) for key in instance.get_materialized_partitions(scores_key)}


def checkpoints_to_evaluate(
    store: ObjectStore, evaluation: EvaluationResource
) -> list[CheckpointRef]:
    """Finished checkpoints that become evaluation methods: final ones, or all when opted in."""
    return [
        ref
        for ref in find_checkpoints(store, evaluation.checkpoint_prefix)
        if ref.final or evaluation.evaluate_intermediate_checkpoints
    ]


def build_checkpoint_sensor(
    job: AssetJob, benches: Sequence[str], scores_key: dg.AssetKey | None = None
) -> dg.SensorDefinition:
    """``new_checkpoint_sensor``: a method partition and evaluation runs per new checkpoint."""

    @dg.sensor(
        name=CHECKPOINT_SENSOR,
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Adds the built-in methods, every configured output folder and a "
        f"`cotir-<variant>-<recipe>-<run>-s<step>` method for each run's final checkpoint (a "
        f"folder with {CHECKPOINT_MARKER} under the checkpoint prefix; intermediate ones "
        f"when evaluation.evaluate_intermediate_checkpoints is set), and requests evaluation "
        f"runs for each new checkpoint on every bench set whose scores are not there yet; "
        f"the cursor remembers the checkpoints already requested.",
    )
    def new_checkpoint_sensor(
        context: dg.SensorEvaluationContext,
        store: ObjectStoreResource,
        evaluation: EvaluationResource,
    ) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        seen = set(cursor.get("checkpoints", []))
        wanted = [*BUILTIN_METHODS, *evaluation.folder_methods()]
        new_methods = [
            m for m in wanted if not context.instance.has_dynamic_partition(METHODS_PARTITIONS, m)
        ]
        requests = []
        object_store = store.open()
        ready = available_benches(object_store, benches)
        done = evaluated_partitions(context.instance, scores_key) if scores_key else set()
        for ref in checkpoints_to_evaluate(object_store, evaluation):
            if ref.hash in seen:
                continue
            seen.add(ref.hash)
            if not context.instance.has_dynamic_partition(METHODS_PARTITIONS, ref.method):
                new_methods.append(ref.method)
            todo = [b for b in ready if str(evaluation_partition(ref.method, b)) not in done]
            context.log.info(
                f"new checkpoint {ref.folder}: method {ref.method}, "
                f"{len(todo)} of {len(ready)} bench set(s) still to evaluate"
            )
            requests += [
                dg.RunRequest(
                    run_key=f"{ref.hash}/{bench}",
                    partition_key=evaluation_partition(ref.method, bench),
                    tags={"cotir/checkpoint": ref.folder},
                )
                for bench in todo
            ]
        new_methods = list(dict.fromkeys(new_methods))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[
                dg.AddDynamicPartitionsRequest(METHODS_PARTITIONS, new_methods)
            ]
            if new_methods
            else [],
            cursor=json.dumps({"checkpoints": sorted(seen)}),
        )

    return new_checkpoint_sensor


def build_nightly_schedule(
    job: AssetJob, benches: Sequence[str], cron: str
) -> dg.ScheduleDefinition:
    """``evaluation_nightly``: one evaluation run per existing (method, bench) partition."""

    @dg.schedule(
        name=NIGHTLY_SCHEDULE,
        job=job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-runs every method on every bench set that bench_sets built "
        "(restorations are resumed, so "
        "only missing or outdated outputs are recomputed); reporting follows through "
        f"{REPORTING_SENSOR}.",
    )
    def evaluation_nightly(
        context: dg.ScheduleEvaluationContext, store: ObjectStoreResource
    ) -> Iterable[dg.RunRequest | dg.SkipReason]:
        methods = context.instance.get_dynamic_partitions(METHODS_PARTITIONS)
        if not methods:
            yield dg.SkipReason(f"no method partitions yet ({CHECKPOINT_SENSOR} adds them)")
            return
        ready = available_benches(store.open(), benches)
        if not ready:
            yield dg.SkipReason("bench_sets built no set (see bench_sets/index.json)")
            return
        tick = context.scheduled_execution_time.isoformat()  # run keys are unique per tick
        for method in methods:
            for bench in ready:
                key = evaluation_partition(method, bench)
                yield dg.RunRequest(
                    run_key=f"{tick}/{key}",
                    partition_key=key,
                    tags={"cotir/trigger": NIGHTLY_SCHEDULE},
                )

    return evaluation_nightly


def build_reporting_sensor(
    reporting: AssetJob,
    scores_key: dg.AssetKey,
    tables_key: dg.AssetKey,
) -> dg.SensorDefinition:
    """``reporting_after_evaluation``: one reporting run once evaluation runs have settled."""

    @dg.sensor(
        name=REPORTING_SENSOR,
        job=reporting,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches the reporting job once when metric_scores has new "
        "materializations, no evaluation run is queued or running, and benchmark_tables is "
        "older than the newest scores.",
    )
    def reporting_after_evaluation(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        handled = int(context.cursor or 0)
        latest = _latest_storage_id(context.instance, scores_key)
        if latest <= handled:
            return dg.SensorResult(skip_reason="no new scores")
        if _latest_storage_id(context.instance, tables_key) > latest:
            return dg.SensorResult(
                skip_reason="tables are newer than the scores", cursor=str(latest)
            )
        active = context.instance.get_runs_count(
            dg.RunsFilter(job_name=EVALUATION_JOB, statuses=_ACTIVE)
        )
        if active:
            return dg.SensorResult(skip_reason=f"waiting for {active} evaluation run(s)")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"scores-{latest}")], cursor=str(latest)
        )

    return reporting_after_evaluation


class EvaluationDefinitions(NamedTuple):
    """What the evaluation stage adds to the code location."""

    assets: list[dg.AssetsDefinition]
    jobs: list[AssetJob]
    schedules: list[dg.ScheduleDefinition]
    sensors: list[dg.SensorDefinition]
    resources: dict[str, Any]


def evaluation_run_selection() -> dg.AssetSelection:
    """The assets only the evaluation and reporting jobs run (not the demo job)."""
    return dg.AssetSelection.assets("restorations", "metric_scores", "benchmark_tables")


def build_evaluation_definitions(
    settings: CotirSettings,
    op_tags: Callable[[str], dict[str, str]] = lambda name: {},
    *,
    nightly_cron: str = DEFAULT_NIGHTLY_CRON,
    evaluation: EvaluationResource | None = None,
    checkpoints: Sequence[dg.AssetKey] = (),
) -> EvaluationDefinitions:
    """Assets, the ``evaluation`` and ``reporting`` jobs, the schedule, sensors, resources."""
    built = build_evaluation_assets(settings, op_tags, checkpoints=checkpoints)
    benches = [spec.name for spec in bench_specs(settings.profile)]
    evaluation_job = dg.define_asset_job(
        name=EVALUATION_JOB,
        selection=dg.AssetSelection.assets(built.restorations, built.metric_scores),
        description="Restore and score one method on one bench set (partition method x bench).",
    )
    reporting_job = dg.define_asset_job(
        name=REPORTING_JOB,
        selection=dg.AssetSelection.assets(built.benchmark_tables),
        description="Regenerate the benchmark tables from every score in the store.",
    )
    return EvaluationDefinitions(
        assets=list(built),
        jobs=[evaluation_job, reporting_job],
        schedules=[build_nightly_schedule(evaluation_job, benches, nightly_cron)],
        sensors=[
            build_checkpoint_sensor(evaluation_job, benches, built.metric_scores.key),
            build_reporting_sensor(
                reporting_job, built.metric_scores.key, built.benchmark_tables.key
            ),
        ],
        resources={"evaluation": evaluation or EvaluationResource.from_settings(settings)},
    )
