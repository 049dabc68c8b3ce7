"""Schema of the source catalog: what a dataset is, how to fetch it, how to pair its files.

The catalog itself is data (``catalog.yaml`` beside this module); these pydantic
models validate it when it is loaded, so a typo in an entry fails with the
entry's name and the field, not later in a fetch.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cotir_pipeline.tasks import Degradation, TaskCode

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{1,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchiveFile(_Strict):
    """One downloadable file (an archive to extract, or a plain file)."""

    url: str = Field(description="http(s):// or s3:// address of the file.")
    sha256: str | None = Field(default=None, description="Hex digest; None when not published.")
    size_bytes: int | None = Field(default=None, ge=0)
    filename: str | None = Field(default=None, description="Name to save as (default: from URL).")
    extract: bool = Field(default=True, description="Unpack .zip/.tar[.gz|.bz2|.xz] archives.")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        return value

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "s3://")):
            raise ValueError(f"url must start with http://, https:// or s3://, got {value!r}")
        return value


class HttpFetch(_Strict):
    """Files downloaded over HTTP(S), resumable, checked against their sha256."""

    method: Literal["http"] = "http"
    files: list[ArchiveFile] = Field(min_length=1)


class S3Fetch(_Strict):
    """A prefix copied from an S3 bucket (public or with the user's credentials)."""

    method: Literal["s3"] = "s3"
    url: str = Field(description="s3://bucket/prefix")
    endpoint_url: str | None = None
    anonymous: bool = Field(default=False, description="Unsigned requests (public buckets).")

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError(f"url must start with s3://, got {value!r}")
        return value


class HubFetch(_Strict):
    """A dataset repository on a model/dataset hub, read through huggingface_hub."""

    method: Literal["hub"] = "hub"
    repo_id: str
    repo_type: Literal["dataset", "model"] = "dataset"
    revision: str | None = None
    allow_patterns: list[str] | None = None


class ManualFetch(_Strict):
    """Files the user must download by hand (licence click-through, no direct link)."""

    method: Literal["manual"] = "manual"
    instructions: str = Field(min_length=10, description="Where and how to get the files.")
    expected_files: list[str] = Field(
        min_length=1, description="Globs (relative to the mirror folder) that must match."
    )


FetchSpec = Annotated[HttpFetch | S3Fetch | HubFetch | ManualFetch, Field(discriminator="method")]


class SplitRule(_Strict):
    """How LQ and HQ files of one split are found and matched.

    Files are matched by a key: the named group ``key`` of ``lq_key``/``hq_key``
    applied to the file's stem (default: the whole stem). Several LQ files may
    share one HQ file (e.g. 14 rain variants of one clean image).

    Layouts that reuse file names across scene folders (GoPro, REDS) set
    ``key_on: path``: the regexes then read the path relative to the extracted
    root, without its suffix. Groups named ``key_<anything>`` extend the key:
    ``key`` and every ``key_*`` group are joined with ``/`` in pattern order,
    e.g. ``(?P<key>[0-9]{4})_NOISY_SRGB_(?P<key_frame>[0-9]{3})`` gives ``0001/010``.
    """

    name: Literal["train", "val", "test"]
    lq_glob: str = Field(description="Glob under the extracted root, e.g. 'train/rain/*.png'.")
    hq_glob: str
    lq_key: str = Field(default=r"^(?P<key>.+)$", description="Regex with a 'key' group.")
    hq_key: str = Field(default=r"^(?P<key>.+)$")
    key_on: Literal["stem", "path"] = Field(
        default="stem",
        description="What the key regexes read: the file's stem, or its POSIX path relative "
        "to the extracted root without the suffix.",
    )
    expected_pairs: int | None = Field(default=None, ge=1)
    degradation: str | None = Field(
        default=None,
        description="Label of this split's degradation when it differs from the source's "
        "(e.g. one folder per CDD-11 class): 'haze' or 'low_light+haze'.",
    )

    @field_validator("lq_key", "hq_key")
    @classmethod
    def _has_key_group(cls, value: str) -> str:
        try:
            pattern = re.compile(value)
        except re.error as error:
            raise ValueError(f"invalid regex {value!r}: {error}") from None
        if "key" not in pattern.groupindex:
            raise ValueError(f"regex {value!r} needs a named group (?P<key>...)")
        return value


class SynthesisSpec(_Strict):
    """A source made by degrading clean images with seeded recipes."""

    clean_from: str = Field(description="Source name of the clean images, or 'demo_photos'.")
    recipe_set: str = Field(description="Name of a recipe set in cotir_pipeline.degradations.")
    seed: int = Field(default=0, ge=0)


class SourceDataset(_Strict):
    """One public restoration dataset (or a synthetic source built from clean images)."""

    name: str = Field(description="Stable id: lowercase letters, digits, '_' (a partition key).")
    title: str
    tasks: list[TaskCode] = Field(min_length=1)
    degradations: list[str] = Field(
        min_length=1, description="Degradation labels present, e.g. ['rain', 'haze+snow']."
    )
    license: str
    homepage: str
    citation: str = Field(min_length=10, description="BibTeX or a full reference.")
    fetch: FetchSpec | None = Field(default=None, description="None for synthetic sources.")
    splits: list[SplitRule] = Field(default_factory=list)
    synthesis: SynthesisSpec | None = None
    expected_pairs: int | None = Field(default=None, ge=1, description="All splits together.")
    real_world: bool = Field(default=False, description="No ground truth (no-reference only).")
    notes: str = ""

    @field_validator("name")
    @classmethod
    def _name_is_a_key(cls, value: str) -> str:
        if not _SOURCE_NAME.match(value):
            raise ValueError(f"name {value!r} must match {_SOURCE_NAME.pattern}")
        return value

    @field_validator("degradations")
    @classmethod
    def _known_degradations(cls, labels: list[str]) -> list[str]:
        for label in labels:
            for part in label.split("+"):
                Degradation(part)  # raises ValueError naming the unknown part
        return labels

    @model_validator(mode="after")
    def _fetch_or_synthesis(self) -> SourceDataset:
        if (self.fetch is None) == (self.synthesis is None):
            raise ValueError("a source needs exactly one of 'fetch' or 'synthesis'")
        if self.fetch is not None and not self.splits:
            raise ValueError("a fetched source needs at least one split rule")
        return self


class SourceCatalog(_Strict):
    """The whole catalog, with its version."""

    version: int = Field(ge=1)
    sources: list[SourceDataset] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SourceCatalog:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"duplicate source name {source.name!r}")
            seen.add(source.name)
        return self

    def get(self, name: str) -> SourceDataset:
        """The source called ``name``; KeyError lists the known names."""
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"no source {name!r} in the catalog (known: {len(self.sources)} sources)")

    def covered_tasks(self) -> set[TaskCode]:
        """Task codes covered by at least one source."""
        return {task for source in self.sources for task in source.tasks}
