"""Builders of the benchmark sets: seeded degradations of clean images, written in the
public CoTIR-Bench format by :func:`cotir_pipeline.evaluation.bench_sets.write_bench_set`.

- :func:`build_agenticir_set`: the AgenticIR set of the CoTIR paper and its release,
  from 100+ clean images (plan: :func:`cotir_pipeline.degradations.agenticir_plan`;
  low-resolution LQ stays x0.25).
- :func:`build_demo_agenticir_set`: the same plan on 100 crops of the demo
  profile's bench photos (labelled as such), optionally reduced per combination.
- :func:`build_seven_d_subset`: the 7D subset (the ``7d`` recipe set, 200 by default).
- :func:`build_demo_bench`: demo-bench patches with a few ``demo`` recipes.

Clean images come as :class:`CleanImage` (from arrays, a folder, or the demo photos).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cotir_pipeline import demo_photos
from cotir_pipeline.degradations import (
    agenticir_plan,
    apply_recipe,
    derive_seed,
    get_recipe,
    get_recipe_set,
)
from cotir_pipeline.evaluation._io import (
    IMAGE_SUFFIXES,
    check_rgb8,
    float_to_rgb8,
    read_rgb,
)
from cotir_pipeline.evaluation.bench_sets import (
    LQ_DIR,
    BenchPrompts,
    BenchRecord,
    BenchSample,
    BenchSet,
    prompts_for,
    write_bench_set,
)
from cotir_pipeline.tasks import (
    task_of,
)

# --------------------------------------------------------------------------------------------
# Clean images


@dataclass(frozen=True)
class CleanImage:
    """A ground-truth image given to a builder: a name, its pixels, an optional depth map.

    ``load`` returns RGB uint8 (H, W, 3); ``load_depth`` (optional) a distance-like
    HxW map (the AgenticIR set uses one per MiO100 image; without it the haze
    operator uses its documented proxy and records that).
    """

    name: str
    load: Callable[[], np.ndarray]
    load_depth: Callable[[], np.ndarray] | None = None
    source: str = ""


def clean_images_from_arrays(
    images: Mapping[str, np.ndarray], depths: Mapping[str, np.ndarray] | None = None
) -> list[CleanImage]:
    """Clean images from in-memory arrays, in the mapping's order (tests, notebooks)."""
    result = []
    for key, pixels in images.items():
        check_rgb8(pixels, what=f"clean image {key!r}")
        depth = (depths or {}).get(key)
        result.append(
            CleanImage(
                key,
                lambda pixels=pixels: pixels,
                (lambda depth=depth: depth) if depth is not None else None,
                source="array",
            )
        )
    return result


def clean_images_from_folder(folder: Path, *, depth_folder: Path | None = None) -> list[CleanImage]:
    """Every image in ``folder`` (sorted by name); depth maps matched by stem (``.npy``).

    A depth map is read from ``depth_folder/<stem>.npy`` when that file exists.
    """
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images in {folder}")
    result = []
    for path in paths:
        depth_path = Path(depth_folder) / f"{path.stem}.npy" if depth_folder else None
        has_depth = depth_path is not None and depth_path.is_file()
        result.append(
            CleanImage(
                path.stem,
                partial(read_rgb, path),
                partial(np.load, depth_path) if has_depth else None,
                str(path),
            )
        )
    return result


def _demo_crops(size: int, stride: int) -> list[tuple[demo_photos.DemoPhoto, demo_photos.Patch]]:
    crops: list[tuple[demo_photos.DemoPhoto, demo_photos.Patch]] = []
    for photo in demo_photos.DEMO_PHOTOS:
        if photo.split == "bench":
            pixels = demo_photos.load_photo(photo)
            kept, _ = demo_photos.cut_patches(photo, pixels, size, stride)
            crops.extend((photo, patch) for patch in kept)
    return crops


def demo_clean_images(count: int = 100, size: int = 128, seed: int = 0) -> list[CleanImage]:
    """``count`` crops of the demo profile's bench photos: the demo's stand-in for MiO100.

    Grid crops of ``size`` px from the bench-split photos only (never the
    training photos), near-flat crops skipped; the grid step is ``size // 2``,
    or ``size // 3`` or ``size // 4`` when a coarser grid gives fewer than
    ``count`` crops; ``count`` of them are picked by a seeded permutation. There
    are three bench photos, so crops overlap and share scenes: good for
    exercising the pipeline, not a replacement for MiO100's 100 distinct scenes.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    candidates: list[tuple[demo_photos.DemoPhoto, demo_photos.Patch]] = []
    for divisor in (2, 3, 4):
        candidates = _demo_crops(size, max(1, size // divisor))
        if len(candidates) >= count:
            break
    if len(candidates) < count:
        raise ValueError(
            f"the demo bench photos give {len(candidates)} crops of {size} px, fewer than {count}; "
            "use a smaller size or count"
        )
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "demo-clean", size)))
    order = sorted(int(i) for i in rng.permutation(len(candidates))[:count])
    cache: dict[str, np.ndarray] = {}

    def loader(photo: demo_photos.DemoPhoto, patch: demo_photos.Patch) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            if photo.photo_id not in cache:
                cache[photo.photo_id] = demo_photos.load_photo(photo)
            return demo_photos.crop(cache[photo.photo_id], patch)

        return load

    return [
        CleanImage(
            _slug(patch.item_key), loader(photo, patch), None, f"demo photo {photo.photo_id}"
        )
        for photo, patch in (candidates[i] for i in order)
    ]


# --------------------------------------------------------------------------------------------
# Builders


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "-", text).strip("-")


def _sample_id(bench: str, recipe: str, clean: str, seed: int, pixels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([bench, recipe, clean, seed, list(pixels.shape)]).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return f"{bench}-{_slug(recipe)}-{_slug(clean)}-{digest.hexdigest()[:10]}"


def _degraded_sample(
    *,
    bench: str,
    recipe_set: str,
    recipe_name: str,
    clean: CleanImage,
    pixels: np.ndarray,
    depth: np.ndarray | None,
    seed: int,
    subset: str,
    prompts: BenchPrompts,
    prompt_seed: int,
    meta: Mapping[str, Any],
) -> BenchSample:
    recipe = get_recipe(recipe_set, recipe_name)
    degraded, applied = apply_recipe(
        pixels.astype(np.float32) / np.float32(255.0), recipe, seed, depth=depth
    )
    lq = float_to_rgb8(degraded)
    sample_id = _sample_id(bench, recipe.name, clean.name, seed, pixels)
    vague, precise = prompts_for(prompts, recipe.label, prompt_seed, sample_id)
    record = BenchRecord(
        id=sample_id,
        lq_path=f"{LQ_DIR}/{sample_id}.png",
        deg_type=recipe.label,
        gen_prompt=vague,
        spe_prompt=precise,
        subset=subset,
        meta={
            **meta,
            "recipe_set": recipe_set,
            "recipe": recipe.name,
            "clean": clean.name,
            "seed": seed,
            "applied": applied,
            "lq_size": [int(lq.shape[0]), int(lq.shape[1])],
            "hq_size": [int(pixels.shape[0]), int(pixels.shape[1])],
        },
    )
    return BenchSample(record, lq, pixels)


def _load_clean(clean: CleanImage) -> tuple[np.ndarray, np.ndarray | None]:
    pixels = check_rgb8(clean.load(), what=f"clean image {clean.name!r}")
    depth = clean.load_depth() if clean.load_depth is not None else None
    return pixels, depth


def build_agenticir_set(
    clean_images: Sequence[CleanImage],
    root: Path,
    *,
    seed: int = 0,
    include_exploration: bool = False,
    per_combination: int | None = None,
    prompts: BenchPrompts | None = None,
    name: str = "agenticir",
    variant: str = "full",
) -> BenchSet:
    """Build the AgenticIR set (the CoTIR paper and its public release) from >= 100 clean images.

    The plan is :func:`~cotir_pipeline.degradations.agenticir_plan` with ``seed``:
    16 combinations, test counts 640 / 400 / 400 (groups A / B / C), each clean
    image at most once per combination. ``subset`` is the group letter
    (exploration samples, if included, get ``A-exploration``). Low-resolution LQ
    stays x0.25 (full-reference scoring upsamples it bicubic). ``per_combination``
    keeps only the first k test samples of each combination (a reduced plan with
    the same 16 combinations, recorded as ``variant`` in bench.json).
    """
    if per_combination is not None and per_combination < 1:
        raise ValueError(f"per_combination must be >= 1, got {per_combination}")
    chosen = _agenticir_chosen(len(clean_images), seed, include_exploration, per_combination)
    order = {recipe.name: index for index, recipe in enumerate(get_recipe_set("agenticir"))}
    by_clean: dict[int, list[Any]] = defaultdict(list)
    for planned in chosen:
        by_clean[planned.clean_index].append(planned)
    used_prompts = prompts or BenchPrompts()

    def samples() -> Iterator[BenchSample]:
        for index in sorted(by_clean):
            clean = clean_images[index]
            pixels, depth = _load_clean(clean)
            for planned in by_clean[index]:
                subset = (
                    planned.group if planned.split == "test" else f"{planned.group}-exploration"
                )
                meta = {
                    "group": planned.group,
                    "combination_index": order[planned.recipe],
                    "split": planned.split,
                    "clean_index": planned.clean_index,
                    "depth": "given" if depth is not None else "proxy",
                }
                yield _degraded_sample(
                    bench=name,
                    recipe_set="agenticir",
                    recipe_name=planned.recipe,
                    clean=clean,
                    pixels=pixels,
                    depth=depth,
                    seed=planned.seed,
                    subset=subset,
                    prompts=used_prompts,
                    prompt_seed=seed,
                    meta=meta,
                )

    counts = Counter(p.group if p.split == "test" else "exploration" for p in chosen)
    info = {
        "kind": "agenticir",
        "seed": seed,
        "variant": variant
        if per_combination is None
        else f"{variant}; {per_combination} per combination",
        "clean_images": len(clean_images),
        "counts": dict(sorted(counts.items())),
        "low_resolution": "LQ kept at x0.25; full-reference metrics upsample it x4 bicubic",
    }
    return write_bench_set(
        root,
        name,
        samples(),
        info=info,
        sort_key=lambda r: (r.meta["combination_index"], r.meta["split"], r.meta["clean_index"]),
    )


def _agenticir_chosen(
    clean_count: int, seed: int, include_exploration: bool, per_combination: int | None
) -> list[Any]:
    """The plan's test samples (and exploration ones if asked), the first
    ``per_combination`` of each combination and split when given."""
    plan = agenticir_plan(clean_count, seed)
    chosen = [p for p in plan if p.split == "test" or include_exploration]
    if per_combination is None:
        return chosen
    kept: dict[tuple[str, str], int] = defaultdict(int)
    reduced = []
    for planned in chosen:
        key = (planned.recipe, planned.split)
        if kept[key] < per_combination:
            kept[key] += 1
            reduced.append(planned)
    return reduced


def build_demo_agenticir_set(
    root: Path,
    *,
    seed: int = 0,
    size: int = 128,
    per_combination: int | None = None,
    prompts: BenchPrompts | None = None,
) -> BenchSet:
    """The AgenticIR plan on 100 crops of the demo bench photos (see :func:`demo_clean_images`).

    The full plan needs 100 distinct clean images; the demo profile ships three
    bench photos, so it uses 100 overlapping ``size`` px crops of them instead of
    MiO100, labelled ``demo-crops`` in bench.json. ``per_combination`` reduces
    it further (same 16 combinations, fewer images each).
    """
    clean = demo_clean_images(100, size, seed)
    return build_agenticir_set(
        clean,
        root,
        seed=seed,
        per_combination=per_combination,
        prompts=prompts,
        name="agenticir_demo",
        variant=f"demo-crops: 100 crops of {size} px from the 3 demo bench photos, not MiO100",
    )


def build_seven_d_subset(
    clean_images: Sequence[CleanImage],
    root: Path,
    *,
    count: int = 200,
    seed: int = 0,
    prompts: BenchPrompts | None = None,
    name: str = "seven_d",
) -> BenchSet:
    """The 7D subset: ``count`` samples over the 15 ``7d`` recipes (a reconstruction).

    Sample i uses recipe i mod 15 (so counts differ by at most one) and clean
    image ``perm[i mod n]`` of a seeded permutation of the n clean images (all
    distinct when n >= count). Low resolution is upsampled back (aligned pairs).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not clean_images:
        raise ValueError("the 7D subset needs at least one clean image")
    recipes = get_recipe_set("7d")
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "7d-plan")))
    permutation = [int(i) for i in rng.permutation(len(clean_images))]
    assignments: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for number in range(count):
        clean_index = permutation[number % len(clean_images)]
        assignments[clean_index].append((number, recipes[number % len(recipes)].name))
    used_prompts = prompts or BenchPrompts()

    def samples() -> Iterator[BenchSample]:
        for clean_index in sorted(assignments):
            clean = clean_images[clean_index]
            pixels, depth = _load_clean(clean)
            for number, recipe_name in assignments[clean_index]:
                yield _degraded_sample(
                    bench=name,
                    recipe_set="7d",
                    recipe_name=recipe_name,
                    clean=clean,
                    pixels=pixels,
                    depth=depth,
                    seed=derive_seed(seed, "7d", recipe_name, clean_index, number),
                    subset="7D",
                    prompts=used_prompts,
                    prompt_seed=seed,
                    meta={"number": number, "clean_index": clean_index},
                )

    info = {
        "kind": "seven_d",
        "seed": seed,
        "clean_images": len(clean_images),
        "variant": "reconstruction",
    }
    return write_bench_set(root, name, samples(), info=info, sort_key=lambda r: r.meta["number"])


#: The demo bench's recipes (``demo`` set names): one per classical tool, two composites.
DEMO_BENCH_RECIPES: tuple[str, ...] = (
    "noise",
    "jpeg",
    "motion_blur",
    "defocus_blur",
    "low_resolution",
    "low_light",
    "haze",
    "rain",
    "lost_color",
    "low_light+noise",
    "low_light+haze+rain+jpeg",
)


def build_demo_bench(
    root: Path,
    *,
    seed: int = 0,
    patch_size: int = 128,
    recipes: Sequence[str] = DEMO_BENCH_RECIPES,
    per_recipe: int = 4,
    prompts: BenchPrompts | None = None,
    name: str = "demo_bench",
) -> BenchSet:
    """The demo bench: non-overlapping patches of the bench-split demo photos, a few recipes.

    Each recipe of the ``demo`` set gets ``per_recipe`` patches picked by a seeded
    permutation; ``subset`` is the task code. Photos of the train split are never
    used, so the demo model is never evaluated on its training scenes.
    """
    if per_recipe < 1:
        raise ValueError(f"per_recipe must be >= 1, got {per_recipe}")
    patches: list[tuple[demo_photos.DemoPhoto, demo_photos.Patch]] = []
    photos: dict[str, np.ndarray] = {}
    for photo in demo_photos.DEMO_PHOTOS:
        if photo.split != "bench":
            continue
        photos[photo.photo_id] = demo_photos.load_photo(photo)
        kept, _ = demo_photos.cut_patches(photo, photos[photo.photo_id], patch_size, patch_size)
        patches.extend((photo, patch) for patch in kept)
    if len(patches) < per_recipe:
        raise ValueError(f"only {len(patches)} bench patches of {patch_size} px, need {per_recipe}")
    used_prompts = prompts or BenchPrompts()

    def samples() -> Iterator[BenchSample]:
        for recipe_name in recipes:
            recipe = get_recipe("demo", recipe_name)
            rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "demo-bench", recipe.name)))
            for index in sorted(int(i) for i in rng.permutation(len(patches))[:per_recipe]):
                photo, patch = patches[index]
                pixels = demo_photos.crop(photos[photo.photo_id], patch)
                clean = CleanImage(_slug(patch.item_key), lambda p=pixels: p, None, photo.photo_id)
                yield _degraded_sample(
                    bench=name,
                    recipe_set="demo",
                    recipe_name=recipe.name,
                    clean=clean,
                    pixels=pixels,
                    depth=None,
                    seed=derive_seed(seed, "demo-bench", recipe.name, patch.item_key),
                    subset=task_of(recipe.degradations).value,
                    prompts=used_prompts,
                    prompt_seed=seed,
                    meta={"patch": patch.item_key, "photo": photo.photo_id},
                )

    info = {
        "kind": "demo_bench",
        "seed": seed,
        "patch_size": patch_size,
        "recipes": list(recipes),
        "per_recipe": per_recipe,
    }
    return write_bench_set(root, name, samples(), info=info)


__all__ = [
    "DEMO_BENCH_RECIPES",
    "CleanImage",
    "build_agenticir_set",
    "build_demo_agenticir_set",
    "build_demo_bench",
    "build_seven_d_subset",
    "clean_images_from_arrays",
    "clean_images_from_folder",
    "demo_clean_images",
]
