"""Benchmark sets in the public CoTIR-Bench test format: the records, the writer and the readers.

Format (the public release's): ``<root>/test.jsonl`` with one record per line
(``id``, ``lq_path``, ``deg_type``, ``gen_prompt`` = vague prompt, ``spe_prompt``
= precise prompt, ``subset``), LQ images under ``lq/`` and ground truth under
``hq/`` with the same file names. This project adds a ``meta`` object per record
(recipe, seed, applied parameters) and a ``bench.json`` with how the set was
built; readers of the public format ignore both.

Writer: :func:`write_bench_set` (every builder in
:mod:`cotir_pipeline.evaluation.bench_builders` writes through it). Readers:
:func:`read_bench_set` ingests any folder in the public format as it is (e.g. the
released CoTIR-Bench test folder); :func:`read_real_world_set` reads a real-world set
(no ground truth: no-reference metrics only).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

from cotir_pipeline.degradations import (
    derive_seed,
)
from cotir_pipeline.digests import file_sha256
from cotir_pipeline.evaluation._io import (
    IMAGE_SUFFIXES,
    check_rgb8,
    find_image,
    read_jsonl,
    write_jsonl,
    write_png,
    write_text,
)
from cotir_pipeline.tasks import (
    COMPOSITE_SEPARATOR,
    Degradation,
    TaskCode,
    split_degradation_label,
    task_of,
)

MANIFEST_NAME = "test.jsonl"
INFO_NAME = "bench.json"
LQ_DIR = "lq"
HQ_DIR = "hq"
#: The fields of a public ``test.jsonl`` record, in the release's order.
PUBLIC_FIELDS: tuple[str, ...] = ("id", "lq_path", "deg_type", "gen_prompt", "spe_prompt", "subset")

PromptKind = Literal["vague", "precise"]
PROMPT_KINDS: tuple[PromptKind, ...] = ("vague", "precise")


class BenchFormatError(ValueError):
    """A bench folder does not follow the test format; the message says where and why."""


# --------------------------------------------------------------------------------------------
# Records and sets


@dataclass(frozen=True)
class BenchRecord:
    """One test sample: the public fields plus this project's ``meta``."""

    id: str
    lq_path: str
    deg_type: str
    gen_prompt: str
    spe_prompt: str
    subset: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def output_name(self) -> str:
        """File name of this sample's restored outputs: the LQ's name, always as PNG.

        Outputs are lossless PNG; an LQ stored as ``x.jpg`` gets ``x.png`` (matching
        is by stem, so the ground truth ``hq/x.*`` still pairs with it).
        """
        name = Path(self.lq_path).name
        return name if name.lower().endswith(".png") else f"{Path(name).stem}.png"

    def prompt(self, kind: PromptKind) -> str:
        """The vague (``gen_prompt``) or precise (``spe_prompt``) instruction."""
        if kind == "vague":
            return self.gen_prompt
        if kind == "precise":
            return self.spe_prompt
        raise ValueError(f"prompt kind must be 'vague' or 'precise', got {kind!r}")

    def to_json(self) -> dict[str, Any]:
        """The manifest line: public fields first, then ``meta`` when present."""
        row: dict[str, Any] = {name: getattr(self, name) for name in PUBLIC_FIELDS}
        if self.meta:
            row["meta"] = dict(self.meta)
        return row


def record_task(record: BenchRecord) -> str:
    """CoTIR-Bench task code of a record: from its degradation label, else its subset.

    Public sets use their own ``deg_type`` spellings (``low-light``, ``gaussian_noise``,
    ``haze_and_rain``); they are read through :func:`~cotir_pipeline.tasks.
    split_degradation_label`. A label of two or more parts is MDR even when a part is
    unknown; otherwise a ``subset`` that is a task code is used, and "unknown" last.
    """
    parts = split_degradation_label(record.deg_type)
    if len(parts) > 1:
        return TaskCode.MDR.value
    if parts and parts[0][1] is not None:
        return task_of([parts[0][1]]).value
    if record.subset in {code.value for code in TaskCode}:
        return record.subset
    return "unknown"


def unknown_labels(records: Iterable[BenchRecord]) -> dict[str, int]:
    """Degradation labels with a part no spelling of this project's names matches, and
    how many records carry each (reported once per label, not once per image)."""
    counts: Counter[str] = Counter()
    for record in records:
        if any(degradation is None for _, degradation in split_degradation_label(record.deg_type)):
            counts[record.deg_type] += 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class BenchSet:
    """A bench folder read into memory: records with their resolved LQ and HQ files."""

    root: Path
    name: str
    records: tuple[BenchRecord, ...]
    lq_files: Mapping[str, Path]
    hq_files: Mapping[str, Path | None]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_reference(self) -> bool:
        """True when every record has its ground-truth image."""
        return bool(self.records) and all(self.hq_files.get(r.id) for r in self.records)

    def lq_file(self, record: BenchRecord) -> Path:
        """The LQ image of ``record``."""
        return self.lq_files[record.id]

    def hq_file(self, record: BenchRecord) -> Path | None:
        """The ground truth of ``record``, or None when the set has none for it."""
        return self.hq_files.get(record.id)

    def get(self, sample_id: str) -> BenchRecord:
        """The record with id ``sample_id``; KeyError when absent."""
        for record in self.records:
            if record.id == sample_id:
                return record
        raise KeyError(f"bench {self.name!r} has no sample {sample_id!r}")

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True)
class BenchSample:
    """A record with its pixels, as the builders hand them to :func:`write_bench_set`."""

    record: BenchRecord
    lq: np.ndarray
    hq: np.ndarray | None


# --------------------------------------------------------------------------------------------
# Prompts

#: Built-in vague prompts (this project's wording; the public list is gen_prompt.txt).
DEFAULT_VAGUE_PROMPTS: tuple[str, ...] = (
    "Please restore this image.",
    "Improve the quality of this photo.",
    "Make this picture look clean and sharp.",
    "Enhance this image.",
    "Fix whatever is wrong with this photo.",
    "Restore this photo to high quality.",
)

#: Built-in precise phrases per degradation, composed in label order.
PRECISE_PHRASES: Mapping[str, str] = MappingProxyType(
    {
        Degradation.LOW_LIGHT: "brighten the under-exposed image",
        Degradation.OVER_EXPOSURE: "correct the over-exposure",
        Degradation.HAZE: "remove the haze",
        Degradation.NONHOMOGENEOUS_HAZE: "remove the uneven haze",
        Degradation.RAIN: "remove the rain streaks",
        Degradation.RAINDROP: "remove the raindrops",
        Degradation.SNOW: "remove the snow",
        Degradation.REFLECTION: "remove the reflection",
        Degradation.SHADOW: "remove the shadows",
        Degradation.MOTION_BLUR: "remove the motion blur",
        Degradation.DEFOCUS_BLUR: "remove the defocus blur",
        Degradation.LOW_RESOLUTION: "increase the resolution",
        Degradation.NOISE: "remove the noise",
        Degradation.UNDERWATER: "correct the underwater colour cast",
        Degradation.FLARE: "remove the lens flare",
        Degradation.WATERMARK: "remove the watermark",
        Degradation.SMARTPHONE: "make it look like a DSLR photo",
        Degradation.LOST_COLOR: "restore the missing colours",
        Degradation.JPEG: "remove the JPEG compression artifacts",
    }
)


def fallback_precise_prompt(label: str) -> str:
    """The release's fallback instruction, "Please correct {deg} issues."."""
    return f"Please correct {label.replace(COMPOSITE_SEPARATOR, ' and ')} issues."


@dataclass(frozen=True)
class BenchPrompts:
    """Where the vague and precise prompts of built sets come from.

    ``precise`` maps a degradation label to candidate sentences (the release's
    ``prompts/spe_prompt/<deg>.txt``); labels without sentences are composed from
    :data:`PRECISE_PHRASES` when ``compose`` is set, else get the fallback text.
    """

    vague: tuple[str, ...] = DEFAULT_VAGUE_PROMPTS
    precise: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    compose: bool = True

    def __post_init__(self) -> None:
        if not self.vague or not all(isinstance(line, str) and line for line in self.vague):
            raise ValueError("BenchPrompts needs at least one non-empty vague prompt")

    @classmethod
    def from_folder(cls, folder: Path) -> BenchPrompts:
        """Read the release's layout: ``gen_prompt.txt`` and ``spe_prompt/<deg>.txt``."""
        folder = Path(folder)
        vague_file = folder / "gen_prompt.txt"
        if not vague_file.is_file():
            raise FileNotFoundError(f"vague prompt list not found: {vague_file}")
        vague = tuple(_lines(vague_file))
        precise = {
            path.stem: tuple(_lines(path)) for path in sorted((folder / "spe_prompt").glob("*.txt"))
        }
        return cls(vague=vague, precise={k: v for k, v in precise.items() if v}, compose=False)

    def vague_prompt(self, rng: np.random.Generator) -> str:
        """One vague prompt drawn with ``rng``."""
        return self.vague[int(rng.integers(len(self.vague)))]

    def precise_prompt(self, label: str, rng: np.random.Generator) -> str:
        """The precise instruction for degradation ``label`` (order = order of application)."""
        options = self.precise.get(label)
        if options:
            return options[int(rng.integers(len(options)))]
        parts = label.split(COMPOSITE_SEPARATOR)
        if self.compose and all(part in PRECISE_PHRASES for part in parts):
            phrases = [PRECISE_PHRASES[part] for part in parts]
            return "Please " + ", then ".join(phrases) + "."
        return fallback_precise_prompt(label)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prompts_for(prompts: BenchPrompts, label: str, seed: int, key: str) -> tuple[str, str]:
    """The vague and precise prompt of one sample, drawn with a generator seeded by its key."""
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "prompts", key)))
    return prompts.vague_prompt(rng), prompts.precise_prompt(label, rng)


# --------------------------------------------------------------------------------------------
# Lineage: one row per bench sample, keyed by the project's one sample-id rule

#: The bench set's per-sample lineage file, beside its ``test.jsonl``.
LINEAGE_MANIFEST_NAME = "manifest.parquet"


def bench_lineage_rows(bench: BenchSet) -> list[dict[str, Any]]:
    """One row per record: the lineage ``sample_id`` and where the sample came from.

    The ``sample_id`` follows the rule every stage uses (:func:`cotir_pipeline.shards.
    sample_id`): a content hash of the source (the bench set), the item key (the record's
    public ``id``), the digests of its LQ and HQ files, the recipe reference
    (``<set>:<name>``, "" for a set without recipes) and the seed. The public ``id``
    stays the file name and the key of restorations and scores; this table maps it to
    the sample id that lineage and the scores' per-sample rows use.
    """
    from cotir_pipeline.shards import sample_id

    rows = []
    for record in bench.records:
        lq_sha256 = file_sha256(bench.lq_file(record))
        hq_file = bench.hq_file(record)
        hq_sha256 = file_sha256(hq_file) if hq_file is not None else None
        applied = record.meta.get("applied")
        applied_json = json.dumps(applied, sort_keys=True) if applied else ""
        seed = record.meta.get("seed")
        digests = [lq_sha256] + ([hq_sha256] if hq_sha256 else [])
        recipe = record.meta.get("recipe")
        reference = f"{record.meta.get('recipe_set')}:{recipe}" if recipe else ""
        rows.append(
            {
                "sample_id": sample_id(bench.name, record.id, digests, reference, seed),
                "bench_set": bench.name,
                "record_id": record.id,
                "degradation": record.deg_type,
                "subset": record.subset,
                "origin": str(record.meta.get("clean") or record.lq_path),
                "recipe": reference or None,
                "applied": applied_json or None,
                "seed": None if seed is None else int(seed),
                "lq_sha256": lq_sha256,
                "hq_sha256": hq_sha256,
            }
        )
    return rows


def bench_lineage_ids(bench: BenchSet) -> dict[str, str]:
    """Public record id -> lineage sample id of every record of ``bench``.

    Read from the set's ``manifest.parquet`` when the folder has one (bench_sets writes
    it and local copies carry it), so a scoring run does not hash the whole set again;
    computed by :func:`bench_lineage_rows` otherwise.
    """
    manifest = bench.root / LINEAGE_MANIFEST_NAME
    if manifest.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(manifest, columns=["record_id", "sample_id"])
        ids = dict(zip(table["record_id"].to_pylist(), table["sample_id"].to_pylist(), strict=True))
        if set(ids) == {record.id for record in bench.records}:
            return ids
    return {row["record_id"]: row["sample_id"] for row in bench_lineage_rows(bench)}


def bench_lineage_schema() -> pa.Schema:
    """The columns of a bench set's ``manifest.parquet`` (:func:`bench_lineage_rows`)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("bench_set", pa.string(), nullable=False),
            pa.field("record_id", pa.string(), nullable=False),
            pa.field("degradation", pa.string()),
            pa.field("subset", pa.string()),
            pa.field("origin", pa.string()),
            pa.field("recipe", pa.string()),
            pa.field("applied", pa.string()),
            pa.field("seed", pa.int64()),
            pa.field("lq_sha256", pa.string()),
            pa.field("hq_sha256", pa.string()),
        ]
    )


def write_bench_lineage(rows: list[dict[str, Any]], destination: Path) -> Path:
    """Write :func:`bench_lineage_rows`' rows as zstd Parquet at ``destination``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(rows, key=lambda row: row["sample_id"])
    destination.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(ordered, schema=bench_lineage_schema())
    pq.write_table(table, destination, compression="zstd")
    return destination


# --------------------------------------------------------------------------------------------
# Writing and reading


def write_bench_set(
    root: Path,
    name: str,
    samples: Iterable[BenchSample],
    *,
    info: Mapping[str, Any] | None = None,
    sort_key: Callable[[BenchRecord], Any] | None = None,
) -> BenchSet:
    """Write samples as ``lq/``, ``hq/``, ``test.jsonl`` and ``bench.json``; return the set.

    Images are written as they come (PNG, atomically); the manifest is written
    last, atomically, so a folder with a ``test.jsonl`` is always complete.
    Duplicate ids or output names raise BenchFormatError.
    """
    root = Path(root)
    records: list[BenchRecord] = []
    seen: set[str] = set()
    with_reference = 0
    for sample in samples:
        record = sample.record
        if record.id in seen:
            raise BenchFormatError(f"duplicate sample id {record.id!r} in bench {name!r}")
        seen.add(record.id)
        if Path(record.lq_path) != Path(LQ_DIR) / record.output_name:
            raise BenchFormatError(
                f"{record.id}: lq_path must be lq/<file name>, got {record.lq_path}"
            )
        write_png(root / record.lq_path, check_rgb8(sample.lq, what=f"LQ of {record.id}"))
        if sample.hq is not None:
            write_png(root / HQ_DIR / record.output_name, check_rgb8(sample.hq, what="HQ"))
            with_reference += 1
        records.append(record)
    if with_reference not in (0, len(records)):
        raise BenchFormatError(f"bench {name!r}: either every sample has an HQ image or none has")
    if sort_key is not None:
        records.sort(key=sort_key)
    details = {
        "name": name,
        "count": len(records),
        "has_reference": bool(records) and with_reference == len(records),
        **dict(info or {}),
    }
    write_text(root / INFO_NAME, json.dumps(details, indent=2, sort_keys=True) + "\n")
    write_jsonl(root / MANIFEST_NAME, [record.to_json() for record in records])
    return read_bench_set(root)


def _resolve_lq(root: Path, lq_path: str) -> Path | None:
    """Where the release's inference script finds an LQ file (absolute, relative, lq/<name>)."""
    candidate = Path(lq_path)
    if candidate.is_absolute() and candidate.is_file():
        return candidate
    relative = root / candidate
    if relative.is_file():
        return relative
    fallback = root / LQ_DIR / candidate.name
    return fallback if fallback.is_file() else None


def _text_field(row: Mapping[str, Any], key: str, line: int, manifest: Path) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BenchFormatError(f"{manifest}: line {line} has no {key!r} (a non-empty string)")
    return value


def _record_from_row(row: Mapping[str, Any], line: int, manifest: Path) -> BenchRecord:
    raw_id = row.get("id")
    lq_path = row.get("lq_path")
    if raw_id in (None, "") and not lq_path:
        raise BenchFormatError(f"{manifest}: line {line} has neither 'id' nor 'lq_path'")
    sample_id = str(raw_id) if raw_id not in (None, "") else Path(str(lq_path)).stem
    raw_meta = row.get("meta")
    meta: dict[str, Any] = dict(raw_meta) if isinstance(raw_meta, Mapping) else {}
    if raw_meta is not None and not isinstance(raw_meta, Mapping):
        meta["meta"] = raw_meta  # kept as it is, under its own name
    meta.update({key: value for key, value in row.items() if key not in (*PUBLIC_FIELDS, "meta")})
    return BenchRecord(
        id=sample_id,
        lq_path=str(lq_path) if lq_path else f"{LQ_DIR}/{sample_id}.png",
        deg_type=str(row.get("deg_type") or ""),
        gen_prompt=_text_field(row, "gen_prompt", line, manifest),
        spe_prompt=_text_field(row, "spe_prompt", line, manifest),
        subset=str(row.get("subset") or ""),
        meta=meta,
    )


def _check_unique(records: Sequence[BenchRecord], where: Path) -> None:
    for what, values in (
        ("sample id", [r.id for r in records]),
        ("output file name", [Path(r.output_name).stem for r in records]),
    ):
        counts: dict[str, int] = defaultdict(int)
        for value in values:
            counts[value] += 1
        repeated = sorted(value for value, count in counts.items() if count > 1)
        if repeated:
            raise BenchFormatError(
                f"{where}: {len(repeated)} repeated {what}s, e.g. {repeated[:5]} "
                "(outputs are matched by file name without suffix, so names must be unique)"
            )


def read_bench_set(root: Path, *, name: str | None = None) -> BenchSet:
    """Read a folder in the public test format as it is (e.g. the released test folder).

    Needs ``test.jsonl`` with ``gen_prompt`` and ``spe_prompt`` on every line; ``id``
    defaults to the LQ file's stem and ``lq_path`` to ``lq/<id>.png``. LQ files are
    resolved like the release's inference script; ground truth is the file of
    ``hq/`` with the LQ's name (any image suffix) where present. Extra fields are
    kept in ``meta``. Raises BenchFormatError for a missing manifest, a bad line,
    missing LQ files or repeated ids/file names.
    """
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise BenchFormatError(f"no {MANIFEST_NAME} in {root} (not a bench folder)")
    try:
        rows = read_jsonl(manifest)
    except ValueError as error:
        raise BenchFormatError(str(error)) from None
    records = [_record_from_row(row, line, manifest) for line, row in enumerate(rows, start=1)]
    _check_unique(records, manifest)
    lq_files: dict[str, Path] = {}
    missing: list[str] = []
    for record in records:
        found = _resolve_lq(root, record.lq_path)
        if found is None:
            missing.append(record.lq_path)
        else:
            lq_files[record.id] = found
    if missing:
        raise BenchFormatError(
            f"{root}: {len(missing)} LQ image(s) listed in {MANIFEST_NAME} are missing, "
            f"e.g. {missing[:5]}"
        )
    hq_files: dict[str, Path | None] = {
        record.id: find_image(root / HQ_DIR, Path(record.lq_path).name) for record in records
    }
    info: dict[str, Any] = {}
    if (root / INFO_NAME).is_file():
        info = json.loads((root / INFO_NAME).read_text(encoding="utf-8"))
    bench_name = name or str(info.get("name") or root.name)
    return BenchSet(root, bench_name, tuple(records), lq_files, hq_files, info)


def read_real_world_set(
    folder: Path,
    *,
    name: str = "real_world",
    degradation_of_subset: Mapping[str, str] | None = None,
    prompts: BenchPrompts | None = None,
    seed: int = 0,
) -> BenchSet:
    """A real-world set (no ground truth, so no-reference metrics only).

    A folder with a ``test.jsonl`` is read as it is (its ``hq/`` is ignored if
    present). Otherwise every image below ``folder`` becomes a record: the first
    sub-folder is the subset (the source data set, e.g. ``RTTS/``), ``deg_type``
    comes from ``degradation_of_subset`` ("unknown" when not given), and prompts
    are drawn from ``prompts``. Nothing is written.
    """
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        bench = read_bench_set(folder, name=name)
        no_reference: dict[str, Path | None] = dict.fromkeys(bench.lq_files)
        info = {**bench.info, "has_reference": False}
        return BenchSet(bench.root, bench.name, bench.records, bench.lq_files, no_reference, info)
    if not folder.is_dir():
        raise BenchFormatError(f"real-world folder not found: {folder}")
    chosen = prompts or BenchPrompts()
    mapping = dict(degradation_of_subset or {})
    records: list[BenchRecord] = []
    lq_files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = path.relative_to(folder)
        if relative.parts[0].startswith("."):
            continue
        subset = relative.parts[0] if len(relative.parts) > 1 else "real_world"
        label = mapping.get(subset, "unknown")
        sample_id = "__".join(relative.with_suffix("").parts)
        vague, precise = prompts_for(chosen, label, seed, sample_id)
        if label == "unknown":
            precise = vague
        records.append(BenchRecord(sample_id, relative.as_posix(), label, vague, precise, subset))
        lq_files[sample_id] = path
    if not records:
        raise BenchFormatError(f"no images found under {folder}")
    _check_unique(records, folder)
    info = {"name": name, "count": len(records), "has_reference": False, "kind": "real_world"}
    return BenchSet(folder, name, tuple(records), lq_files, dict.fromkeys(lq_files), info)


__all__ = [
    "DEFAULT_VAGUE_PROMPTS",
    "HQ_DIR",
    "INFO_NAME",
    "LQ_DIR",
    "MANIFEST_NAME",
    "PRECISE_PHRASES",
    "PROMPT_KINDS",
    "PUBLIC_FIELDS",
    "BenchFormatError",
    "BenchPrompts",
    "BenchRecord",
    "BenchSample",
    "BenchSet",
    "PromptKind",
    "fallback_precise_prompt",
    "prompts_for",
    "read_bench_set",
    "read_real_world_set",
    "record_task",
    "write_bench_set",
]
