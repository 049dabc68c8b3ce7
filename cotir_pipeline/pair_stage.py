"""From a source to WebDataset shards: plan the pairs, materialize them, write shards.

Two steps, matching two assets:

1. :func:`plan_demo_pairs` / :func:`plan_fetched_pairs` list every pair a source
   yields (``raw_pairs``): for fetched sources the paired LQ/HQ files, for
   synthetic ones the clean item plus the seeded degradation recipe.
2. :func:`write_pair_shards` turns the plan into shards (``pair_shards``): each
   pair is loaded or synthesized, resized/cropped to the stored size, encoded as
   PNG and written into the shard of its degradation label, with one manifest
   row per pair. Shard membership is a pure function of the plan, so a re-run
   skips shards whose manifest exists (written last) and rebuilds only shards
   that hold failures.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from cotir_pipeline import demo_photos
from cotir_pipeline.digests import file_sha256
from cotir_pipeline.images import BadImageError, load_rgb8
from cotir_pipeline.png import png_encoder
from cotir_pipeline.shards import (
    STATUS_DROPPED,
    STATUS_FAILED,
    STATUS_OK,
    ShardSample,
    encode_png,
    manifest_bytes,
    parquet_bytes,
    read_manifest,
    recorded_shard_bytes,
    sample_id,
    write_shard,
)
from cotir_pipeline.sources.pairing import clean_images, collect_single_side, pair_split
from cotir_pipeline.sources.spec import SourceCatalog, SourceDataset
from cotir_pipeline.store import ObjectStore
from cotir_pipeline.tasks import parse_degradation_label, task_of

#: Folder of the pair shards in the store: pair_shards/<source>/<degradation>/...
PAIR_SHARDS_PREFIX = "pair_shards"
#: Folder of the raw pair plans: raw_pairs/<source>/pairs.parquet
RAW_PAIRS_PREFIX = "raw_pairs"

PLAN_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("item_key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("degradation", pa.string(), nullable=False),
        pa.field("lq_path", pa.string()),
        pa.field("hq_path", pa.string()),
        pa.field("recipe", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)


class BadSampleError(ValueError):
    """The inputs of one pair are unusable (corrupt, truncated, mismatched); skip it."""


@dataclass(frozen=True)
class PlannedPair:
    """One pair a source yields, before any pixels are touched.

    Fetched pairs have ``lq_path``/``hq_path`` (relative to the fetched root).
    Synthetic pairs have ``recipe`` (the recipe label) and ``seed``; their clean
    image is named by ``item_key``.
    """

    source: str
    item_key: str
    split: str
    degradation: str
    lq_path: str | None = None
    hq_path: str | None = None
    recipe: str | None = None
    seed: int | None = None
    status: str = STATUS_OK
    reason: str | None = None

    @property
    def shard_group(self) -> str:
        """Planned pairs of one degradation label share shards."""
        return self.degradation


@dataclass(frozen=True)
class ShardJob:
    """The pairs of one shard and where it goes (picklable: runs in worker processes)."""

    source: str
    degradation: str
    index: int
    pairs: tuple[PlannedPair, ...]
    size: int
    fetched_root: str | None

    @property
    def name(self) -> str:
        """File name stem of the shard."""
        return f"{self.source}-{self.degradation}-{self.index:06d}"

    def key(self, suffix: str) -> str:
        """Store key of the shard's tar (``.tar``) or manifest (``.parquet``)."""
        return f"{PAIR_SHARDS_PREFIX}/{self.source}/{self.degradation}/{self.name}{suffix}"


@dataclass
class ShardStageReport:
    """What a run of :func:`write_pair_shards` did."""

    shards_total: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    samples_ok: int = 0
    samples_dropped: int = 0
    samples_failed: int = 0
    by_degradation: dict[str, int] = field(default_factory=dict)
    by_split: dict[str, int] = field(default_factory=dict)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    #: The PNG encoder of the shards written in this run (provenance).
    png_encoder: str = ""
    #: Stored tars found truncated or damaged on resume (their size differs from the
    #: recorded one): rebuilt in this run.
    shards_damaged: list[str] = field(default_factory=list)


# -- planning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeRef:
    """A recipe named by its set and name (stored per pair), with its degradation label."""

    recipe_set: str
    name: str
    label: str

    @property
    def ref(self) -> str:
        """``<set>:<name>``, the form stored in the plan."""
        return f"{self.recipe_set}:{self.name}"


def recipe_refs(recipe_set: str) -> list[RecipeRef]:
    """References to every recipe of a set, in the set's fixed order."""
    from cotir_pipeline.degradations import get_recipe_set

    return [
        RecipeRef(recipe_set, recipe.name, recipe.label) for recipe in get_recipe_set(recipe_set)
    ]


def files_source(source: SourceDataset, catalog: SourceCatalog) -> SourceDataset | None:
    """The catalog source whose files ``source`` is built from: itself when it is fetched,
    its clean source when it is synthesized from one, None for the shipped demo photos."""
    if source.synthesis is None:
        return source
    if source.synthesis.clean_from == "demo_photos":
        return None
    return catalog.get(source.synthesis.clean_from)


@dataclass(frozen=True)
class PlanSettings:
    """How a source's pairs are planned (the data stage's configuration)."""

    seed: int
    recipes_per_item: int
    demo_patch_size: int
    demo_stride: int


def plan_source(
    source: SourceDataset, catalog: SourceCatalog, root: Path | None, settings: PlanSettings
) -> list[PlannedPair]:
    """Every pair of ``source`` (``raw_pairs``); ``root`` holds the files of
    :func:`files_source` (None when it has none)."""
    if source.synthesis is None:
        assert root is not None, f"{source.name}: a fetched source needs its files"
        return plan_fetched_pairs(source.name, root, source.splits, source.degradations[0])
    recipes = recipe_refs(source.synthesis.recipe_set)
    seed = settings.seed + source.synthesis.seed
    per_item = min(settings.recipes_per_item, len(recipes))
    if root is None:
        return plan_demo_pairs(
            recipes=recipes,
            patch_size=settings.demo_patch_size,
            stride=settings.demo_stride,
            recipes_per_patch=per_item,
            seed=seed,
        )

    clean_source = catalog.get(source.synthesis.clean_from)
    clean_items = [
        (f"{image.split}/{image.key}", image.path.relative_to(root).as_posix(), image.split)
        for image in clean_images(root, clean_source.splits)
    ]
    return plan_synthetic_pairs(
        source.name, clean_items, recipes=recipes, recipes_per_item=per_item, seed=seed
    )


def plan_demo_pairs(
    *,
    recipes: list[RecipeRef],
    patch_size: int,
    stride: int,
    recipes_per_patch: int,
    seed: int,
) -> list[PlannedPair]:
    """Plan the demo source: shipped photos cut into patches, each with seeded recipes.

    Each patch gets ``recipes_per_patch`` distinct recipes chosen by a generator
    seeded from (seed, patch key), so the plan is stable when photos are added.
    Skipped patches are planned too, with status ``dropped`` and the reason.
    """
    if recipes_per_patch < 1 or recipes_per_patch > len(recipes):
        raise ValueError(f"recipes_per_patch must be 1..{len(recipes)}, got {recipes_per_patch}")
    planned: list[PlannedPair] = []
    for photo in demo_photos.DEMO_PHOTOS:
        image = demo_photos.load_photo(photo)
        patches, skipped = demo_photos.cut_patches(photo, image, patch_size, stride)
        for patch in patches:
            generator = np.random.default_rng(_seed_for(seed, patch.item_key))
            chosen = generator.choice(len(recipes), size=recipes_per_patch, replace=False)
            for choice in sorted(int(index) for index in chosen):
                recipe = recipes[choice]
                planned.append(
                    PlannedPair(
                        source="demo",
                        item_key=patch.item_key,
                        split=patch.split,
                        degradation=recipe.label,
                        recipe=recipe.ref,
                        seed=_seed_for(seed, f"{patch.item_key}|{recipe.ref}"),
                    )
                )
        for skip in skipped:
            planned.append(
                PlannedPair(
                    source="demo",
                    item_key=skip.item_key,
                    split=photo.split,
                    degradation="none",
                    status=STATUS_DROPPED,
                    reason=skip.reason,
                )
            )
    return planned


def plan_synthetic_pairs(
    source: str,
    clean_items: list[tuple[str, str, str]],
    *,
    recipes: list[RecipeRef],
    recipes_per_item: int,
    seed: int,
) -> list[PlannedPair]:
    """Plan a synthetic source over clean images of a fetched source.

    ``clean_items`` are (item key, path relative to the clean source's root, split).
    """
    if recipes_per_item < 1 or recipes_per_item > len(recipes):
        raise ValueError(f"recipes_per_item must be 1..{len(recipes)}, got {recipes_per_item}")
    planned = []
    for item_key, relative_path, split in clean_items:
        generator = np.random.default_rng(_seed_for(seed, item_key))
        chosen = generator.choice(len(recipes), size=recipes_per_item, replace=False)
        for choice in sorted(int(index) for index in chosen):
            recipe = recipes[choice]
            planned.append(
                PlannedPair(
                    source=source,
                    item_key=item_key,
                    split=split,
                    degradation=recipe.label,
                    hq_path=relative_path,
                    recipe=recipe.ref,
                    seed=_seed_for(seed, f"{item_key}|{recipe.ref}"),
                )
            )
    return planned


def plan_fetched_pairs(
    source: str, root: Path, rules: list[Any], default_label: str
) -> list[PlannedPair]:
    """Plan a fetched source: pair its files with each split rule.

    Files that cannot be paired are planned as ``dropped`` with the reason, so the
    manifest accounts for every file the source delivered. One-sided splits (real-world
    LQ without ground truth, clean-only HQ) yield no training pair: their images are
    planned as ``dropped`` with the stage that uses them instead.
    """

    planned: list[PlannedPair] = []
    for rule in rules:
        label = rule.degradation or default_label
        if not rule.lq_glob or not rule.hq_glob:
            single = collect_single_side(root, rule)
            reason = (
                "no ground truth: a real-world image, used by the real-world bench set"
                if single.side == "lq"
                else "clean image only: used as clean input by synthetic sources"
            )
            for image in single.images:
                relative = image.path.relative_to(root).as_posix()
                planned.append(
                    _dropped(
                        source,
                        rule.name,
                        relative,
                        image.degradation or label,
                        f"{ONE_SIDED_PREFIX}{reason}",
                    )
                )
            continue
        result = pair_split(root, rule)
        for file_pair in result.pairs:
            planned.append(
                PlannedPair(
                    source=source,
                    item_key=f"{rule.name}/{file_pair.lq.relative_to(root).as_posix()}",
                    split=rule.name,
                    degradation=file_pair.degradation or label,
                    lq_path=file_pair.lq.relative_to(root).as_posix(),
                    hq_path=file_pair.hq.relative_to(root).as_posix(),
                )
            )
        unpaired = [(path, "LQ file without a matching HQ file") for path in result.unmatched_lq]
        unpaired += [(path, "HQ file without any LQ file") for path in result.unmatched_hq]
        for path, reason in unpaired:
            relative = path.relative_to(root).as_posix()
            planned.append(_dropped(source, rule.name, relative, label, f"unpaired: {reason}"))
        for key in result.duplicate_hq_keys:
            reason = f"ambiguous: several HQ files share the key {key!r}"
            planned.append(_dropped(source, rule.name, f"hq-key:{key}", label, reason))
    return planned


#: Reason prefix of the images of one-sided splits (counted against expected_pairs, which
#: counts a one-sided split's images).
ONE_SIDED_PREFIX = "one-sided: "
#: Default share of a source's expected_pairs that may be missing before raw_pairs fails
#: (a few files dropped by a re-release or unreadable are normal; half a split is not).
DEFAULT_PAIR_COUNT_TOLERANCE = 0.05


@dataclass(frozen=True)
class PairCount:
    """A fetched source's planned pairs against the catalog's ``expected_pairs``."""

    source: str
    expected: int | None
    found: int
    tolerance: float

    @property
    def verdict(self) -> str:
        """``unchecked`` (no expected count), ``ok``, ``short`` (missing pairs within the
        tolerance: a warning) or ``failed`` (more missing than the tolerance allows)."""
        if self.expected is None:
            return "unchecked"
        if self.found >= self.expected:
            return "ok"
        if self.found >= self.expected * (1.0 - self.tolerance):
            return "short"
        return "failed"

    def message(self) -> str:
        """One line naming the counts, for logs and the failure."""
        if self.expected is None:
            return f"{self.source}: {self.found} pairs (the catalog gives no expected count)"
        missing = max(self.expected - self.found, 0)
        return (
            f"{self.source}: {self.found} pairs found, {self.expected} expected by the catalog "
            f"({missing} missing, {missing / self.expected:.1%}; tolerance "
            f"{self.tolerance:.0%}). Compare the fetched or mirrored files with the split "
            f"globs of '{self.source}' in cotir_pipeline/sources/catalog.yaml; the plan in "
            f"raw_pairs/{self.source}/pairs.parquet lists every unpaired file with its reason."
        )


def count_pairs(
    source: str, pairs: Sequence[PlannedPair], expected: int | None, tolerance: float
) -> PairCount:
    """Count ``pairs`` as the catalog counts them: usable pairs, plus the images of
    one-sided splits."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    found = sum(
        1
        for pair in pairs
        if pair.status == STATUS_OK or (pair.reason or "").startswith(ONE_SIDED_PREFIX)
    )
    return PairCount(source, expected, found, tolerance)


def _dropped(source: str, split: str, item: str, label: str, reason: str) -> PlannedPair:
    """A planned entry for an input that yields no pair, with the reason."""
    return PlannedPair(
        source=source,
        item_key=f"{split}/{item}",
        split=split,
        degradation=label,
        status=STATUS_DROPPED,
        reason=reason,
    )


def _seed_for(seed: int, text: str) -> int:
    """A 63-bit seed derived from a base seed and a key (stable across platforms)."""
    digest = hashlib.sha256(f"{seed}|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def plan_table(pairs: list[PlannedPair]) -> pa.Table:
    """The plan as an Arrow table (the ``raw_pairs`` Parquet)."""
    columns = {name: [getattr(pair, name) for pair in pairs] for name in PLAN_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=PLAN_SCHEMA)


def plan_from_table(table: pa.Table) -> list[PlannedPair]:
    """Inverse of :func:`plan_table`."""
    return [PlannedPair(**row) for row in table.to_pylist()]


def save_plan(store: ObjectStore, source: str, pairs: list[PlannedPair]) -> str:
    """Write the plan of ``source`` to the store (atomic); return its key."""
    key = f"{RAW_PAIRS_PREFIX}/{source}/pairs.parquet"
    store.put_bytes(key, parquet_bytes(plan_table(pairs)))
    return key


def load_plan(store: ObjectStore, source: str) -> list[PlannedPair]:
    """Read the plan written by :func:`save_plan`."""

    data = store.get_bytes(f"{RAW_PAIRS_PREFIX}/{source}/pairs.parquet")
    return plan_from_table(pq.read_table(io.BytesIO(data)))


# -- materializing one pair -------------------------------------------------------------


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def square_to_size(image: np.ndarray, size: int) -> tuple[np.ndarray, list[int]]:
    """Resize the shorter side to ``size`` (bicubic) and take the centre square.

    Returns the square and its box [left, top, right, bottom] in the input's pixels.
    """
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = _resize(image, new_width, new_height)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    box = [
        round(left / scale),
        round(top / scale),
        min(width, round((left + size) / scale)),
        min(height, round((top + size) / scale)),
    ]
    return resized[top : top + size, left : left + size], box


def _read_image(path: Path) -> tuple[np.ndarray, str, list[str]]:
    try:
        loaded = load_rgb8(path)
    except BadImageError as error:
        raise BadSampleError(str(error)) from None
    return loaded.pixels, loaded.sha256, loaded.notes


@dataclass(frozen=True)
class MaterializedPair:
    """Pixels of one pair at the stored size, plus what is needed for its manifest row."""

    hq: np.ndarray
    lq: np.ndarray
    digests: tuple[str, ...]
    applied: list[dict[str, Any]]
    crop_box: list[int]
    notes: list[str]


_PHOTO_CACHE: dict[str, tuple[np.ndarray, str]] = {}


def _demo_photo(item_key: str) -> demo_photos.DemoPhoto | None:
    """The demo photo a demo item key (``<photo id>/x.._y.._s..``) was cut from."""
    photo_id = item_key.partition("/")[0]
    return next((p for p in demo_photos.DEMO_PHOTOS if p.photo_id == photo_id), None)


def _demo_patch(item_key: str) -> tuple[np.ndarray, str, list[int]]:
    photo_id, _, coordinates = item_key.partition("/")
    if photo_id not in _PHOTO_CACHE:
        photo = _demo_photo(item_key)
        if photo is None:
            raise BadSampleError(f"unknown demo photo {photo_id!r}")
        _PHOTO_CACHE[photo_id] = (demo_photos.load_photo(photo), demo_photos.photo_digest(photo))
    image, digest = _PHOTO_CACHE[photo_id]
    fields = dict((part[0], int(part[1:])) for part in coordinates.split("_"))
    x, y, size = fields["x"], fields["y"], fields["s"]
    return image[y : y + size, x : x + size].copy(), digest, [x, y, x + size, y + size]


def pair_sample_id(pair: PlannedPair, digests: Sequence[str]) -> str:
    """The sample id of a planned pair, whatever its fate (ok, dropped or failed).

    The project's one rule (:func:`cotir_pipeline.shards.sample_id`): source, item key,
    the sha256 of the input files' bytes (LQ and HQ of a fetched pair; the clean image
    of a synthetic one), the recipe record and the seed. The recipe record is the
    recipe's reference (``<set>:<name>``): with the seed it determines the parameters the
    recipe draws (stored in the manifest's ``recipe`` column), and unlike those it exists
    before the pair is made, so a pair that failed keeps its id when a retry succeeds.
    """
    return sample_id(pair.source, pair.item_key, digests, pair.recipe or "", pair.seed)


def input_digests(pair: PlannedPair, fetched_root: Path | None) -> tuple[str, ...]:
    """sha256 of the input files of ``pair`` that can be read, in the order
    :func:`materialize_pair` reports them (for the id of a pair that was not made)."""
    if pair.source == "demo" and pair.recipe is not None and pair.hq_path is None:
        photo = _demo_photo(pair.item_key)
        return (demo_photos.photo_digest(photo),) if photo is not None else ()
    if fetched_root is None:
        return ()
    paths = [pair.hq_path] if pair.recipe is not None else [pair.lq_path, pair.hq_path]
    digests = []
    for relative in paths:
        if relative is None:
            continue
        try:
            digests.append(file_sha256(fetched_root / relative))
        except OSError:
            continue
    return tuple(digests)


def materialize_pair(pair: PlannedPair, size: int, fetched_root: Path | None) -> MaterializedPair:
    """Load (fetched) or synthesize (recipe) one pair at ``size`` x ``size`` pixels."""
    if pair.recipe is not None:
        from cotir_pipeline.degradations import apply_recipe, get_recipe

        recipe_set, _, recipe_name = pair.recipe.partition(":")
        notes: list[str] = []
        if pair.hq_path is not None and fetched_root is not None:
            clean, digest, notes = _read_image(fetched_root / pair.hq_path)
            hq, box = square_to_size(clean, size)
        elif pair.source == "demo":
            clean, digest, box = _demo_patch(pair.item_key)
            hq, _ = square_to_size(clean, size)
        else:
            raise BadSampleError(f"synthetic pair of {pair.source!r} has no clean image path")
        try:
            recipe = get_recipe(recipe_set, recipe_name)
        except KeyError as error:
            raise BadSampleError(f"unknown recipe {pair.recipe!r}: {error}") from None
        degraded, applied = apply_recipe(_to_float(hq), recipe, int(pair.seed or 0))
        lq = _to_uint8(degraded)
        # Low-resolution recipes return a smaller image; store it at the HQ size.
        lq = _resize(lq, size, size)
        return MaterializedPair(
            hq=hq, lq=lq, digests=(digest,), applied=applied, crop_box=box, notes=notes
        )
    if fetched_root is None or pair.lq_path is None or pair.hq_path is None:
        raise BadSampleError("fetched pair without paths or fetched root")
    lq_image, lq_digest, lq_notes = _read_image(fetched_root / pair.lq_path)
    hq_image, hq_digest, hq_notes = _read_image(fetched_root / pair.hq_path)
    hq_height, hq_width = hq_image.shape[:2]
    lq_height, lq_width = lq_image.shape[:2]
    if (lq_height, lq_width) != (hq_height, hq_width):
        ratio_w, ratio_h = hq_width / lq_width, hq_height / lq_height
        if abs(ratio_w - ratio_h) > 0.05 * max(ratio_w, ratio_h):
            raise BadSampleError(
                f"LQ {lq_width}x{lq_height} and HQ {hq_width}x{hq_height} differ in aspect ratio"
            )
        # Super-resolution sources: bring LQ to the HQ grid before the shared crop.
        lq_image = _resize(lq_image, hq_width, hq_height)
    hq, box = square_to_size(hq_image, size)
    lq, _ = square_to_size(lq_image, size)
    notes = [f"lq: {note}" for note in lq_notes] + [f"hq: {note}" for note in hq_notes]
    return MaterializedPair(
        hq=hq, lq=lq, digests=(lq_digest, hq_digest), applied=[], crop_box=box, notes=notes
    )


# -- shards ----------------------------------------------------------------------------


def shard_jobs(
    pairs: Iterable[PlannedPair], shard_size: int, size: int, fetched_root: Path | None
) -> list[ShardJob]:
    """Group planned pairs into shards: per degradation label, in a stable order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    groups: dict[str, list[PlannedPair]] = defaultdict(list)
    source = None
    for pair in pairs:
        if pair.status != STATUS_OK:
            continue
        source = pair.source
        groups[pair.shard_group].append(pair)
    jobs = []
    for degradation in sorted(groups):
        ordered = sorted(groups[degradation], key=lambda pair: (pair.item_key, pair.recipe or ""))
        for index, start in enumerate(range(0, len(ordered), shard_size)):
            jobs.append(
                ShardJob(
                    source=str(source),
                    degradation=degradation,
                    index=index,
                    pairs=tuple(ordered[start : start + shard_size]),
                    size=size,
                    fetched_root=str(fetched_root) if fetched_root else None,
                )
            )
    return jobs


def _row(pair: PlannedPair, status: str, reason: str | None, **values: Any) -> dict[str, Any]:
    parts = parse_degradation_label(pair.degradation) if pair.degradation != "none" else ()
    return {
        "source": pair.source,
        "item_key": pair.item_key,
        "split": pair.split,
        "degradation": pair.degradation,
        "task": task_of(parts).value if parts else "",
        "status": status,
        "reason": reason,
        "seed": pair.seed,
        **values,
    }


def build_shard(job: ShardJob, work_dir: str, shard_uri: str) -> tuple[str, str, list[dict]]:
    """Materialize one shard's pairs into a local tar; return (tar path, manifest path, rows).

    Runs in a worker process. A bad input becomes a ``dropped`` row with its reason;
    an unexpected error becomes a ``failed`` row (retried on the next run).
    """
    fetched_root = Path(job.fetched_root) if job.fetched_root else None
    samples: list[ShardSample] = []
    rows: list[dict[str, Any]] = []
    for pair in job.pairs:
        try:
            made = materialize_pair(pair, job.size, fetched_root)
        except BadSampleError as error:
            sample_id = pair_sample_id(pair, input_digests(pair, fetched_root))
            rows.append(_row(pair, STATUS_DROPPED, str(error), sample_id=sample_id))
            continue
        except Exception as error:  # recorded, and the shard is rebuilt on the next run
            sample_id = pair_sample_id(pair, input_digests(pair, fetched_root))
            detail = traceback.format_exception_only(type(error), error)[-1].strip()
            reason = f"unexpected error: {detail}"
            rows.append(_row(pair, STATUS_FAILED, reason, sample_id=sample_id))
            continue
        recipe_json = json.dumps(made.applied, sort_keys=True) if made.applied else ""
        sample_id = pair_sample_id(pair, made.digests)
        hq_png, lq_png = encode_png(made.hq), encode_png(made.lq)
        meta = {
            "sample_id": sample_id,
            "source": pair.source,
            "item_key": pair.item_key,
            "split": pair.split,
            "deg": pair.degradation,
            "recipe": made.applied,
            "seed": pair.seed,
            "crop_box": made.crop_box,
        }
        samples.append(ShardSample(key=sample_id, hq_png=hq_png, lq_png=lq_png, meta=meta))
        rows.append(
            _row(
                pair,
                STATUS_OK,
                None,
                sample_id=sample_id,
                shard_uri=shard_uri,
                shard_key=sample_id,
                width=job.size,
                height=job.size,
                hq_sha256=hashlib.sha256(hq_png).hexdigest(),
                lq_sha256=hashlib.sha256(lq_png).hexdigest(),
                recipe=recipe_json or None,
                crop_box=made.crop_box,
                notes="; ".join(made.notes) or None,
            )
        )
    tar_path = os.path.join(work_dir, f"{job.name}.tar")
    written = write_shard(samples, Path(tar_path))
    manifest_path = os.path.join(work_dir, f"{job.name}.parquet")
    Path(manifest_path).write_bytes(manifest_bytes(rows, shard_bytes=written.size_bytes))
    return tar_path, manifest_path, rows


def _store_shard(store: ObjectStore, job: ShardJob, tar_path: str, manifest_path: str) -> None:
    """Move one built shard into the store: the tar, then its manifest (the completion marker)."""
    store.put_file(job.key(".tar"), Path(tar_path), move=True)
    store.put_file(job.key(".parquet"), Path(manifest_path), move=True)


def _finished_rows(
    store: ObjectStore, job: ShardJob, damaged: list[str] | None = None
) -> list[dict[str, Any]] | None:
    """Rows of a finished shard, or None when it must be (re)built. A tar whose size
    differs from the one its manifest recorded (truncated by a killed copy, damaged) is
    rebuilt, and its key appended to ``damaged``."""
    manifest_key = job.key(".parquet")
    if not store.exists(manifest_key) or not store.exists(job.key(".tar")):
        return None
    manifest = read_manifest(store.get_bytes(manifest_key))
    rows = manifest.to_pylist()
    if any(row["status"] == STATUS_FAILED for row in rows):
        return None
    if len(rows) != len(job.pairs):
        return None  # the plan changed under this shard name: rebuild it
    expected = recorded_shard_bytes(manifest)
    if expected is not None and store.head(job.key(".tar")).size != expected:
        if damaged is not None:
            damaged.append(job.key(".tar"))
        return None
    return rows


def write_pair_shards(
    store: ObjectStore,
    pairs: list[PlannedPair],
    *,
    size: int,
    shard_size: int,
    fetched_root: Path | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ShardStageReport:
    """Write the shards and manifests of one source's planned pairs (resumable).

    Per shard: tar first, then its manifest (the completion marker). Then per
    degradation folder a ``sizes.json``, and for the source a combined
    ``manifest.parquet`` that also holds the pairs dropped while planning, a
    ``report.json``, and ``_SUCCESS.json`` when no sample failed unexpectedly.
    """
    if not pairs:
        raise ValueError("no planned pairs: nothing to shard")
    source = pairs[0].source
    jobs = shard_jobs(pairs, shard_size, size, fetched_root)
    report = ShardStageReport(shards_total=len(jobs), png_encoder=png_encoder())
    all_rows: list[dict[str, Any]] = []
    sizes: dict[str, dict[str, int]] = defaultdict(dict)
    pending: list[ShardJob] = []
    for job in jobs:
        rows = _finished_rows(store, job, report.shards_damaged)
        if rows is None:
            pending.append(job)
            continue
        report.shards_skipped += 1
        all_rows.extend(rows)
        sizes[job.degradation][f"{job.name}.tar"] = sum(r["status"] == STATUS_OK for r in rows)
    done = report.shards_skipped

    def landed(job: ShardJob, rows: list[dict]) -> None:
        nonlocal done
        report.shards_written += 1
        all_rows.extend(rows)
        sizes[job.degradation][f"{job.name}.tar"] = sum(row["status"] == STATUS_OK for row in rows)
        done += 1
        if progress is not None:
            progress(done, len(jobs))

    _build_and_store(store, pending, workers, landed)
    for degradation, counts in sizes.items():
        store.put_text(
            f"{PAIR_SHARDS_PREFIX}/{source}/{degradation}/sizes.json",
            json.dumps(dict(sorted(counts.items())), indent=1),
        )
    for pair in pairs:
        if pair.status != STATUS_OK:
            sample_id = pair_sample_id(pair, ())  # dropped while planning: no input was read
            all_rows.append(_row(pair, pair.status, pair.reason, sample_id=sample_id))
    store.put_bytes(f"{PAIR_SHARDS_PREFIX}/{source}/manifest.parquet", manifest_bytes(all_rows))
    _tally(report, all_rows)
    summary = json.dumps(asdict(report), indent=1)
    store.put_text(f"{PAIR_SHARDS_PREFIX}/{source}/report.json", summary)
    if report.samples_failed == 0:
        # The finished marker, written last and only when nothing needs a retry.
        store.put_text(f"{PAIR_SHARDS_PREFIX}/{source}/_SUCCESS.json", summary)
    else:
        store.delete(f"{PAIR_SHARDS_PREFIX}/{source}/_SUCCESS.json")
    return report


def _build_and_store(
    store: ObjectStore,
    pending: list[ShardJob],
    workers: int,
    landed: Callable[[ShardJob, list[dict]], None],
) -> None:
    """Build the pending shards (in ``workers`` processes when there are several) and store
    them in order; ``landed(job, rows)`` runs once each is stored.

    Storing a shard (fsync and rename, or an upload) overlaps building the next one; one
    shard at most is in flight.
    """
    with store.staging_dir() as staging:
        work_dir = str(staging)
        results: Iterable[tuple[ShardJob, tuple[str, str, list[dict]]]]
        if workers > 1 and len(pending) > 1:
            executor = ProcessPoolExecutor(max_workers=workers)
            futures = [
                (job, executor.submit(build_shard, job, work_dir, store.uri(job.key(".tar"))))
                for job in pending
            ]
            results = ((job, future.result()) for job, future in futures)
        else:
            executor = None
            results = (
                (job, build_shard(job, work_dir, store.uri(job.key(".tar")))) for job in pending
            )
        storing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cotir-shard-store")
        in_flight: tuple[ShardJob, Future[None], list[dict]] | None = None
        try:
            for job, (tar_path, manifest_path, rows) in results:
                stored = storing.submit(_store_shard, store, job, tar_path, manifest_path)
                if in_flight is not None:
                    in_flight[1].result()
                    landed(in_flight[0], in_flight[2])
                in_flight = (job, stored, rows)
            if in_flight is not None:
                in_flight[1].result()
                landed(in_flight[0], in_flight[2])
        finally:
            storing.shutdown(wait=True)
            if executor is not None:
                executor.shutdown(cancel_futures=True)


def _tally(report: ShardStageReport, rows: list[dict[str, Any]]) -> None:
    """Count the manifest rows into the report: ok per degradation and split, drops and
    failures per reason."""
    for row in rows:
        status = row["status"]
        if status == STATUS_OK:
            report.samples_ok += 1
            report.by_degradation[row["degradation"]] = (
                report.by_degradation.get(row["degradation"], 0) + 1
            )
            report.by_split[row["split"]] = report.by_split.get(row["split"], 0) + 1
        else:
            if status == STATUS_DROPPED:
                report.samples_dropped += 1
            else:
                report.samples_failed += 1
            reason = (row["reason"] or "unknown").split(":")[0]
            report.drop_reasons[reason] = report.drop_reasons.get(reason, 0) + 1
