"""Training data: WebDataset shards per degradation, strict round-robin, resumable position.

Layout read (written by ``cotir_pipeline.annotation_stage``; REFERENCE.md section 6):
``<root>/<degradation>/<degradation>-NNNNNN.tar`` holding ``<key>.hq.png``,
``<key>.lq.png`` and ``<key>.meta.json`` (``cot.questions`` [vague, precise],
``cot.answers``, ``deg``, optional ``jpeg_type``).

How a batch is made (REFERENCE.md section 4):

- one WebDataset pipeline per degradation folder (:class:`DegradationStream`): shards
  are *resampled* (drawn with replacement, forever) by a seeded generator, each shard
  read with ``webdataset.tarfile_to_samples``;
- split by node and worker: every (rank, worker) pair is one *split*; when a degradation
  has at least as many shards as there are splits, each split resamples its own disjoint
  subset of the shards; otherwise all splits share the shards and take disjoint records
  of each shard they open (record i goes to split (i - draw) mod splits), so two ranks
  never read the same record of the same shard draw;
- strict round-robin over degradation types (:class:`TrainingStream`): each round visits
  every type once, in an order reshuffled every round;
- a bad record (missing member, undecodable image or JSON, unparsable CoT answer,
  mismatched sizes, broken tar) is skipped and counted by reason, never raised; a type
  whose shards give nothing at all is dropped from the rotation (counted as
  ``exhausted``);
- each sample is resized (bilinear, without antialiasing like the release, unless
  ``TrainConfig.resize_antialias``) to the progressive stage's patch and gets its prompt
  from the curriculum (:func:`choose_prompt`).

Resumable position: a stream's state is small (per degradation: shards drawn, records
read of the current shard; the round-robin/prompt generator's state; skip counts), so
every batch carries the state *after* it, the main process keeps the latest state per
stream (:class:`DataPosition`) and a checkpoint restores exactly the next batch. With
``W`` loader workers, batch ``s`` always comes from stream ``s mod W``, whichever worker
process produces it, so the streams line up again after a resume.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention
from PIL import Image

from cotir_pipeline.annotation.prompts import (
    PROMPTS_FOLDER,
    PROMPTS_PACKAGE,
    SPE_PROMPT_FOLDER,
    PromptFileError,
    gen_prompts,
    spe_prompts,
)
from cotir_pipeline.store import inherited_store_config, open_store, parse_store_url
from cotir_pipeline.store.sync import pull
from models.text_targets import CoTParseError, split_cot_answer
from models.train_config import CurriculumConfig, TrainConfig

SHARD_SUFFIX = ".tar"
#: Fields every training record must have.
REQUIRED_FIELDS = ("lq.png", "hq.png", "meta.json")
#: Examples of skip messages kept per stream (for the run report).
MAX_SKIP_EXAMPLES = 5


class NoTrainingDataError(RuntimeError):
    """No degradation folder gives a usable sample."""


class BadSample(ValueError):  # noqa: N818 - an outcome, counted and skipped, not an error
    """A record that cannot be trained on; ``reason`` is the counting key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# -- finding shards ---------------------------------------------------------------------------


#: The training shards' manifest beside the degradation folders (written by the
#: training_shards asset): when present it says which shards belong to the set.
SHARD_MANIFEST = "manifest.parquet"


def discover_shards(
    root: Path, *, log: Callable[[str], None] | None = None
) -> dict[str, list[str]]:
    """``{degradation: [shard paths]}`` of the training shards under ``root``.

    With a ``manifest.parquet`` beside the folders (what the training_shards asset
    writes), exactly the shards it lists: a tar it does not list is a leftover of an
    earlier build (a degradation whose kept set shrank or vanished) and is ignored, with
    one ``log`` line naming them; a listed shard that is missing is an error. Without a
    manifest (a folder in the release's layout), every ``<degradation>/*.tar``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training shard folder {root} does not exist")
    listed: set[str] | None = None
    manifest = root / SHARD_MANIFEST
    if manifest.is_file():
        import pyarrow.parquet as pq

        uris = pq.read_table(manifest, columns=["shard_uri"]).column("shard_uri").to_pylist()
        listed = {"/".join(str(uri).rsplit("/", 2)[-2:]) for uri in uris}
    found: dict[str, list[str]] = {}
    ignored: list[str] = []
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        tars = []
        for path in sorted(folder.glob(f"*{SHARD_SUFFIX}")):
            if not path.is_file():
                continue
            if listed is not None and f"{folder.name}/{path.name}" not in listed:
                ignored.append(f"{folder.name}/{path.name}")
                continue
            tars.append(str(path))
        if tars:
            found[folder.name] = tars
    if listed is not None:
        present = {"/".join(Path(path).parts[-2:]) for paths in found.values() for path in paths}
        missing = sorted(listed - present)
        if missing:
            raise FileNotFoundError(
                f"{manifest} lists {len(missing)} shard(s) that are not under {root}: "
                f"{', '.join(missing[:5])}; rebuild training_shards or fetch them again"
            )
    if ignored and log is not None:
        log(
            f"ignoring {len(ignored)} shard(s) under {root} that {SHARD_MANIFEST} does not "
            f"list (left from an earlier build): {', '.join(ignored[:5])}"
            + (" ..." if len(ignored) > 5 else "")
        )
    if not found:
        raise FileNotFoundError(f"{root} holds no <degradation>/*.tar training shards")
    return found


def resolve_shard_source(source: str | Path, cache_dir: Path) -> Path:
    """A local folder of training shards for ``source``.

    ``source`` is a local folder (returned as is), a ``file://`` URL, or an object-store
    URL (``s3://bucket/prefix/training_shards``) whose ``<degradation>/*.tar`` objects
    are downloaded into ``cache_dir`` first (objects already there with the same size
    are kept, so a restart downloads nothing twice).
    """
    text = str(source)
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"training shard folder {path} does not exist")
        return path

    location = parse_store_url(text)
    if location.kind == "file":
        assert location.path is not None
        if not location.path.is_dir():
            raise FileNotFoundError(f"training shard folder {location.path} does not exist")
        return location.path
    store = open_store(inherited_store_config(text))
    cache_dir = Path(cache_dir)
    shards = pull(store, "", cache_dir, refresh="size", include=_a_shard_key)
    if not shards.copied + shards.unchanged:
        raise FileNotFoundError(f"{text} holds no <degradation>/*.tar training shards")
    # Which shards belong to the set (discover_shards); never another set's list.
    if store.exists(SHARD_MANIFEST):
        store.download_file(SHARD_MANIFEST, cache_dir / SHARD_MANIFEST)
    else:
        (cache_dir / SHARD_MANIFEST).unlink(missing_ok=True)
    return cache_dir


def _a_shard_key(relative: str) -> bool:
    """``<degradation>/<name>.tar``: a training shard in a store folder."""
    return relative.endswith(SHARD_SUFFIX) and relative.count("/") == 1


# -- skips ------------------------------------------------------------------------------------


@dataclass
class SkipCounter:
    """Counts of skipped records by reason, plus a few example messages."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    muted: bool = False

    def count(self, reason: str, message: str = "") -> None:
        """Record one skipped record (ignored while muted, i.e. while replaying a resume)."""
        if self.muted:
            return
        self.counts[reason] += 1
        if message and len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{reason}: {message}"[:300])

    def tar_handler(self, error: Exception) -> bool:
        """WebDataset handler: count a tar-level error and go on (never re-raise)."""
        self.count("tar_error", f"{type(error).__name__}: {error}")
        return True

    @property
    def total(self) -> int:
        """All skipped records."""
        return int(sum(self.counts.values()))

    def state_dict(self) -> dict[str, Any]:
        """Counts and examples, as plain data."""
        return {"counts": dict(self.counts), "examples": list(self.examples)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.counts = Counter({str(k): int(v) for k, v in state.get("counts", {}).items()})
        self.examples = [str(item) for item in state.get("examples", [])]


# -- one degradation ----------------------------------------------------------------------------


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions)."""
    text = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def read_shard_records(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    """Records of one shard through a WebDataset pipeline (errors go to ``handler``)."""
    import webdataset as wds

    pipeline = wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples(handler=handler))
    yield from pipeline


class DegradationStream:
    """Infinite, resumable stream of raw records of one degradation folder.

    Shards are resampled with a generator seeded by ``seed`` (see the module docstring
    for how ``split_index`` of ``split_count`` splits the work). The stream ends only
    when its shards yield no usable record for this split over many draws
    (``exhausted``): with ``report_usable`` the consumer says which records were usable
    (:meth:`mark_good`), otherwise every record counts as usable.
    """

    def __init__(
        self,
        degradation: str,
        shards: Sequence[str],
        *,
        seed: int,
        split_index: int,
        split_count: int,
        skips: SkipCounter,
        reader: Callable[[str, Callable[[Exception], bool]], Iterator[dict[str, Any]]] = (
            read_shard_records
        ),
        report_usable: bool = False,
    ) -> None:
        if not shards:
            raise ValueError(f"degradation {degradation!r} has no shards")
        if not 0 <= split_index < split_count:
            raise ValueError(f"split {split_index} is outside 0..{split_count - 1}")
        self.degradation = degradation
        ordered = sorted(shards)
        self.shared = len(ordered) < split_count
        self.shards = ordered if self.shared else ordered[split_index::split_count]
        self.split_index = split_index
        self.split_count = split_count if self.shared else 1
        self.seed = seed
        self.skips = skips
        self.reader = reader
        self.report_usable = report_usable
        self.max_empty_draws = max(16, 2 * self.split_count * len(self.shards))
        self._rng = random.Random(seed)
        self.draws = 0
        self.offset = 0
        self.delivered = 0
        self.empty_draws = 0
        self.exhausted = False
        self.good_in_draw = 0
        self._resume_offset = 0
        self._iterator: Iterator[dict[str, Any]] | None = None

    def __iter__(self) -> DegradationStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.exhausted:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._generate()
        record = next(self._iterator)
        self.delivered += 1
        return record

    def _generate(self) -> Iterator[dict[str, Any]]:
        while True:
            url = self._rng.choice(self.shards)
            self.draws += 1
            phase = (self.split_index + self.draws - 1) % self.split_count
            skip, self._resume_offset = self._resume_offset, 0
            self.skips.muted = skip > 0
            if not skip:
                self.good_in_draw = 0
            self.offset = 0
            try:
                for index, record in enumerate(self.reader(url, self.skips.tar_handler)):
                    self.offset = index + 1
                    if index < skip:
                        continue
                    self.skips.muted = False
                    if self.shared and index % self.split_count != phase:
                        continue
                    if not self.report_usable:
                        self.good_in_draw += 1
                    yield record
            finally:
                self.skips.muted = False
            # The consumer reports usable records (mark_good) before asking for the next.
            if self.good_in_draw:
                self.empty_draws = 0
                continue
            self.empty_draws += 1
            if self.empty_draws >= self.max_empty_draws:
                self.exhausted = True
                self.skips.count("exhausted", f"{self.degradation}: no usable record in its shards")
                return

    def mark_good(self) -> None:
        """The last record was usable (a draw with none counts towards ``exhausted``)."""
        self.good_in_draw += 1

    def state_dict(self) -> dict[str, Any]:
        """Shards drawn (the current one included), records read of it, counters."""
        return {
            "draws": self.draws,
            "offset": self.offset,
            "delivered": self.delivered,
            "empty_draws": self.empty_draws,
            "good_in_draw": self.good_in_draw,
            "exhausted": self.exhausted,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue right after the record :meth:`state_dict` was taken at."""
        draws = int(state["draws"])
        self._rng = random.Random(self.seed)
        for _ in range(max(0, draws - 1)):
            self._rng.choice(self.shards)
        self.draws = max(0, draws - 1)
        self._resume_offset = int(state["offset"]) if draws else 0
        self.delivered = int(state.get("delivered", 0))
        self.empty_draws = int(state.get("empty_draws", 0))
        self.good_in_draw = int(state.get("good_in_draw", 0))
        self.exhausted = bool(state.get("exhausted", False))
        self._iterator = None


# -- decoding and prompts -----------------------------------------------------------------------


def image_to_tensor(image: Image.Image, patch: int, *, antialias: bool = False) -> torch.Tensor:
    """RGB image -> (3, patch, patch) float32 in [-1, 1], bilinear resize.

    ``patch`` 0 keeps the image's own size. Without ``antialias`` (the release's resize,
    ``align_corners=False``) each output pixel mixes only the 2 x 2 nearest inputs, so
    a downsized pair keeps the amplitude of its noise and fine texture; ``antialias``
    averages over the whole footprint instead (a deviation, ``TrainConfig.resize_antialias``).
    """
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    if patch and tensor.shape[-2:] != (patch, patch):
        tensor = F.interpolate(
            tensor, size=(patch, patch), mode="bilinear", antialias=antialias, align_corners=False
        ).clamp_(-1.0, 1.0)
    return tensor[0].contiguous()


def _open_image(data: Any, name: str) -> Image.Image:
    if not isinstance(data, bytes | bytearray):
        raise BadSample("bad_image", f"{name} is not encoded image bytes")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises many types for broken data
        raise BadSample("bad_image", f"{name}: {type(error).__name__}: {error}") from None
    return image


@dataclass(frozen=True)
class DecodedSample:
    """One usable training pair, resized, with its metadata."""

    key: str
    degradation: str
    lq: torch.Tensor
    hq: torch.Tensor
    questions: tuple[str, str]
    answer: str
    jpeg_type: str | None = None


def crop_pair(
    lq: torch.Tensor, hq: torch.Tensor, patch: int, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``patch`` x ``patch`` window of both images (resized up if smaller)."""
    height, width = hq.shape[-2:]
    if height < patch or width < patch:
        return (
            F.interpolate(lq[None], size=(patch, patch), mode="bilinear", align_corners=False)[0],
            F.interpolate(hq[None], size=(patch, patch), mode="bilinear", align_corners=False)[0],
        )
    top = rng.randrange(height - patch + 1)
    left = rng.randrange(width - patch + 1)
    window = (slice(None), slice(top, top + patch), slice(left, left + patch))
    return lq[window].contiguous(), hq[window].contiguous()


def decode_record(
    record: Mapping[str, Any],
    patch: int,
    folder: str,
    *,
    crop_rng: random.Random | None = None,
    antialias: bool = False,
) -> DecodedSample:
    """Check and decode one raw record; raises :class:`BadSample` with a reason.

    Both images are resized to ``patch`` (the paper's stages; ``antialias`` as in
    :func:`image_to_tensor`), or, with ``crop_rng``, cut to the same random ``patch``
    window at full resolution (the demo's stages).
    """
    key = str(record.get("__key__", "?"))
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise BadSample("missing_field", f"{key} lacks {missing}")
    try:
        meta = json.loads(record["meta.json"])
    except (TypeError, ValueError) as error:
        raise BadSample("bad_meta", f"{key}: {error}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("cot"), dict):
        raise BadSample("bad_meta", f"{key}: meta.json has no 'cot' object")
    answer = meta["cot"].get("answers")
    if not isinstance(answer, str):
        raise BadSample("bad_meta", f"{key}: cot.answers is not a string")
    try:
        split_cot_answer(answer)
    except CoTParseError as error:
        raise BadSample("bad_cot", f"{key}: {error}") from None
    raw_questions = meta["cot"].get("questions") or []
    if not isinstance(raw_questions, list):
        raw_questions = []
    questions = [q if isinstance(q, str) else "" for q in raw_questions[:2]]
    questions += [""] * (2 - len(questions))
    degradation = meta.get("deg") if isinstance(meta.get("deg"), str) else folder
    lq = _open_image(record["lq.png"], "lq.png")
    hq = _open_image(record["hq.png"], "hq.png")
    if lq.size != hq.size:
        raise BadSample("size_mismatch", f"{key}: lq {lq.size} != hq {hq.size}")
    if crop_rng is None:
        lq_tensor = image_to_tensor(lq, patch, antialias=antialias)
        hq_tensor = image_to_tensor(hq, patch, antialias=antialias)
    else:
        lq_tensor, hq_tensor = crop_pair(
            image_to_tensor(lq, 0), image_to_tensor(hq, 0), patch, crop_rng
        )
    jpeg_type = meta.get("jpeg_type")
    return DecodedSample(
        key=key,
        degradation=degradation or folder,
        lq=lq_tensor,
        hq=hq_tensor,
        questions=(questions[0].strip(), questions[1].strip()),
        answer=answer,
        jpeg_type=str(jpeg_type) if isinstance(jpeg_type, str | int) and jpeg_type != "" else None,
    )


@dataclass(frozen=True)
class PromptChoice:
    """The instruction a sample is trained with, and where it came from."""

    text: str
    arm: str  # "vague" or "precise"
    source: str  # "list", "template", "jpeg_type", "question" or "fallback"


def _templates(degradation: str) -> tuple[str, ...]:

    try:
        return spe_prompts(degradation)
    except (ValueError, PromptFileError):
        return ()


#: The degradation a ``jpeg_type`` refines (our label for JPEG compression).
JPEG_DEGRADATION = "jpeg"
_JPEG_TYPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _shipped_template_folder() -> Path:

    return Path(str(resources.files(PROMPTS_PACKAGE).joinpath(PROMPTS_FOLDER, SPE_PROMPT_FOLDER)))


@functools.lru_cache(maxsize=256)
def jpeg_type_templates(jpeg_type: str, folder: str | None = None) -> tuple[str, ...]:
    """Template lines of ``<folder>/<jpeg_type>.txt`` (none when the file is missing).

    The release's rule: a JPEG sample's ``jpeg_type`` names a template list next to the
    per-degradation ones. Blank lines are skipped; a name that is not a plain file name
    gives none. ``folder`` None is the shipped ``spe_prompt`` folder.
    """
    if not _JPEG_TYPE_NAME.match(jpeg_type):
        return ()
    path = (Path(folder) if folder is not None else _shipped_template_folder()) / f"{jpeg_type}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def readable_degradation(degradation: str) -> str:
    """``low_light+noise`` -> ``low light and noise`` (for the fallback prompt)."""
    return " and ".join(part.replace("_", " ") for part in degradation.split("+"))


def choose_prompt(
    rng: random.Random,
    degradation: str,
    questions: Sequence[str],
    step: int,
    curriculum: CurriculumConfig,
    jpeg_type: str | None = None,
) -> PromptChoice:
    """Pick a sample's prompt by the curriculum (REFERENCE.md section 4).

    Vague with probability ``vague_probability(step)``: then a line of the vague list
    (0.8) or the record's question[0] (0.2). Otherwise precise: a line of the
    degradation's template list (0.7; 0.2 for lost_color) or question[1]. For a sample
    with JPEG in its degradation and a ``jpeg_type`` that has a template list
    (:func:`jpeg_type_templates`), that list replaces the degradation's, as in the
    release. A missing source (empty question, no template list, e.g. for a composite)
    gives the fallback.
    """

    fallback = curriculum.fallback.format(deg=readable_degradation(degradation))
    padded = [*(q or "" for q in questions[:2]), "", ""]
    if rng.random() < curriculum.vague_probability(step):
        if rng.random() < curriculum.vague_list_probability:
            return PromptChoice(rng.choice(gen_prompts()), "vague", "list")
        if padded[0].strip():
            return PromptChoice(padded[0].strip(), "vague", "question")
        return PromptChoice(fallback, "vague", "fallback")
    if rng.random() < curriculum.template_probability_for(degradation):
        if jpeg_type and JPEG_DEGRADATION in degradation.split("+"):
            lines = jpeg_type_templates(jpeg_type, curriculum.jpeg_type_prompt_dir)
            if lines:
                return PromptChoice(rng.choice(lines), "precise", "jpeg_type")
        templates = _templates(degradation)
        if templates:
            return PromptChoice(rng.choice(templates), "precise", "template")
        return PromptChoice(fallback, "precise", "fallback")
    if padded[1].strip():
        return PromptChoice(padded[1].strip(), "precise", "question")
    return PromptChoice(fallback, "precise", "fallback")


# -- round-robin batches ------------------------------------------------------------------------


@dataclass
class TrainBatch:
    """One step's samples for one process, plus the stream state right after them."""

    step: int
    stream: int
    lq: torch.Tensor
    hq: torch.Tensor
    prompts: list[str]
    answers: list[str]
    degradations: list[str]
    keys: list[str]
    arms: list[str]
    state: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> TrainBatch:
        """Pinned copies of the image tensors (the DataLoader calls this with pin_memory)."""
        self.lq = self.lq.pin_memory()
        self.hq = self.hq.pin_memory()
        return self


class TrainingStream:
    """Strict round-robin over degradation streams, decoded, resized and prompted."""

    def __init__(
        self,
        shards: Mapping[str, Sequence[str]],
        config: TrainConfig,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        stream: int = 0,
        num_streams: int = 1,
        reader: Callable[[str, Callable[[Exception], bool]], Iterator[dict[str, Any]]] = (
            read_shard_records
        ),
    ) -> None:
        if not shards:
            raise NoTrainingDataError("no degradation folders to train on")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if not 0 <= stream < num_streams:
            raise ValueError(f"stream {stream} is outside 0..{num_streams - 1}")
        self.config = config
        self.degradations = sorted(shards)
        self.skips = SkipCounter()
        self.rng = random.Random(derive_seed(seed, rank, stream, "round-robin"))
        split_index = rank * num_streams + stream
        split_count = world_size * num_streams
        self.streams = {
            name: DegradationStream(
                name,
                shards[name],
                seed=derive_seed(seed, rank, stream, "shards", name),
                split_index=split_index,
                split_count=split_count,
                skips=self.skips,
                reader=reader,
                report_usable=True,
            )
            for name in self.degradations
        }
        self.order: list[str] = []
        self.position = 0
        self.rounds = 0

    def next_degradation(self) -> str:
        """The next type of the current round; a new shuffled round when it is done."""
        while True:
            if self.position >= len(self.order):
                active = [name for name in self.degradations if not self.streams[name].exhausted]
                if not active:
                    raise NoTrainingDataError(
                        f"no degradation gives a usable sample; skipped: {dict(self.skips.counts)}"
                    )
                self.rng.shuffle(active)
                self.order = active
                self.position = 0
                self.rounds += 1
            name = self.order[self.position]
            self.position += 1
            if not self.streams[name].exhausted:
                return name

    def next_sample(
        self, step: int, patch: int, *, crop: bool = False
    ) -> tuple[DecodedSample, PromptChoice]:
        """One decoded sample of the next degradation in the round, with its prompt."""
        while True:
            name = self.next_degradation()
            stream = self.streams[name]
            for record in stream:
                try:
                    sample = decode_record(
                        record,
                        patch,
                        name,
                        crop_rng=self.rng if crop else None,
                        antialias=self.config.resize_antialias,
                    )
                except BadSample as bad:
                    self.skips.count(bad.reason, str(bad))
                    continue
                stream.mark_good()
                prompt = choose_prompt(
                    self.rng,
                    sample.degradation,
                    sample.questions,
                    step,
                    self.config.curriculum,
                    sample.jpeg_type,
                )
                return sample, prompt

    def next_batch(self, step: int, stream_id: int = 0) -> TrainBatch:
        """The batch of step ``step`` at that step's stage (patch and batch size)."""
        stage = self.config.stage_at(step)
        crop = stage.sampling == "crop"
        picked = [self.next_sample(step, stage.patch, crop=crop) for _ in range(stage.batch_size)]
        return TrainBatch(
            step=step,
            stream=stream_id,
            lq=torch.stack([sample.lq for sample, _ in picked]),
            hq=torch.stack([sample.hq for sample, _ in picked]),
            prompts=[prompt.text for _, prompt in picked],
            answers=[sample.answer for sample, _ in picked],
            degradations=[sample.degradation for sample, _ in picked],
            keys=[sample.key for sample, _ in picked],
            arms=[prompt.arm for _, prompt in picked],
            state=self.state_dict(),
        )

    def samples_per_degradation(self) -> dict[str, int]:
        """Records delivered per degradation so far (bad ones included)."""
        return {name: stream.delivered for name, stream in self.streams.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after the last sample."""
        return {
            "degradations": list(self.degradations),
            "rng": self.rng.getstate(),
            "order": list(self.order),
            "position": self.position,
            "rounds": self.rounds,
            "streams": {name: stream.state_dict() for name, stream in self.streams.items()},
            "skips": self.skips.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the degradation folders must be the same."""
        if list(state["degradations"]) != self.degradations:
            raise ValueError(
                f"the checkpoint's degradations {list(state['degradations'])} differ from the "
                f"shards' {self.degradations}"
            )
        rng_state = state["rng"]
        self.rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.order = list(state["order"])
        self.position = int(state["position"])
        self.rounds = int(state["rounds"])
        for name, stream_state in state["streams"].items():
            self.streams[name].load_state_dict(stream_state)
        self.skips.load_state_dict(state["skips"])


class ShardBatchDataset(torch.utils.data.IterableDataset):
    """Batches for steps ``start_step`` .. ``stop_step - 1`` of one process.

    With ``W`` DataLoader workers (``num_streams`` must equal ``max(W, 1)``), worker w
    produces the steps s = start_step + w + k W, all from stream s mod W; a stream's
    state in ``states`` (from :class:`DataPosition`) makes it continue where it left off.
    """

    def __init__(
        self,
        shards: Mapping[str, Sequence[str]],
        config: TrainConfig,
        *,
        seed: int,
        rank: int,
        world_size: int,
        num_streams: int,
        start_step: int,
        stop_step: int,
        states: Mapping[int, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if num_streams < 1:
            raise ValueError(f"num_streams must be positive, got {num_streams}")
        if stop_step < start_step:
            raise ValueError(f"stop_step {stop_step} is before start_step {start_step}")
        self.shards = {name: list(paths) for name, paths in shards.items()}
        self.config = config
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_streams = num_streams
        self.start_step = start_step
        self.stop_step = stop_step
        self.states = dict(states or {})

    def __iter__(self) -> Iterator[TrainBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_streams:
            raise ValueError(
                f"the loader runs {workers} workers but the dataset expects {self.num_streams}"
            )
        step = self.start_step + worker
        stream_id = step % workers
        stream = TrainingStream(
            self.shards,
            self.config,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            stream=stream_id,
            num_streams=workers,
        )
        if stream_id in self.states:
            stream.load_state_dict(self.states[stream_id])
        while step < self.stop_step:
            yield stream.next_batch(step, stream_id)
            step += workers


class DataPosition:
    """The main process's record of every stream's state after the last consumed batch."""

    def __init__(self, num_streams: int) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be positive, got {num_streams}")
        self.num_streams = num_streams
        self.states: dict[int, dict[str, Any]] = {}

    def update(self, batch: TrainBatch) -> None:
        """Remember the state that follows ``batch``."""
        self.states[batch.stream] = batch.state

    def skip_counts(self) -> dict[str, int]:
        """Skipped records by reason, summed over streams."""
        total: Counter[str] = Counter()
        for state in self.states.values():
            total.update(state["skips"]["counts"])
        return dict(total)

    def samples_per_degradation(self) -> dict[str, int]:
        """Records read per degradation, summed over streams."""
        total: Counter[str] = Counter()
        for state in self.states.values():
            for name, stream in state["streams"].items():
                total[name] += int(stream["delivered"])
        return dict(total)

    def state_dict(self) -> dict[str, Any]:
        """Stream count and states (plain data, safe for ``torch.load(weights_only=True)``)."""
        return {"num_streams": self.num_streams, "states": dict(self.states)}

    def load_state_dict(self, state: Mapping[str, Any]) -> bool:
        """Restore; returns False (and keeps nothing) if the stream count differs."""
        if int(state["num_streams"]) != self.num_streams:
            return False
        self.states = {int(k): dict(v) for k, v in state["states"].items()}
        return True


def make_loader(
    shards: Mapping[str, Sequence[str]],
    config: TrainConfig,
    *,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
    stop_step: int,
    position: DataPosition,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`ShardBatchDataset` with ``config.num_workers`` workers."""
    workers = config.num_workers
    dataset = ShardBatchDataset(
        shards,
        config,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_streams=position.num_streams,
        start_step=start_step,
        stop_step=stop_step,
        states=position.states,
    )
    if position.num_streams != max(1, workers):
        raise ValueError(f"position has {position.num_streams} streams for {workers} workers")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )
