"""One typed settings object for the whole project, read from ``COTIR_*`` variables.

Every entry point (the ``cotir`` command, the Dagster code location, the training
launcher) calls :func:`load_settings` once at start, so a bad value fails early with
a one-line message that names the variable, instead of a traceback from deep inside
a run.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cotir_pipeline.store import config as store_defaults
from cotir_pipeline.store.location import parse_store_url

ENV_PREFIX = "COTIR_"


class SettingsError(ValueError):
    """A setting has a bad value; the message starts with the variable's name."""


GuidedDecodingField = Literal["response_format", "structured_outputs", "guided_json", "none"]


class Profile(StrEnum):
    """Which coherent set of resources a run uses (see README, "Profiles")."""

    DEMO = "demo"
    FULL = "full"


def env_name(field_name: str) -> str:
    """Environment variable that sets ``field_name`` (e.g. ``store`` -> ``COTIR_STORE``)."""
    return f"{ENV_PREFIX}{field_name.upper()}"


class CotirSettings(BaseSettings):
    """All project settings; each field is set by ``COTIR_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        use_enum_values=False,
    )

    profile: Profile = Field(
        default=Profile.DEMO,
        description="demo: one CPU machine, no network, no downloaded weights; "
        "full: real sources, vLLM servers, real weights, GPUs.",
    )
    home: Path = Field(
        default=Path(".cotir"),
        description="Local working folder (default store, caches); relative paths are "
        "resolved against the current directory at load time.",
    )
    store: str = Field(
        default="",
        description="Where every stage writes: file:///abs/path, a plain path, or "
        "s3://bucket/prefix. Empty means <home>/store.",
    )
    mirror_dir: Path | None = Field(
        default=None,
        description="Local mirror of source datasets: <mirror_dir>/<source name>/ holds the "
        "archives or files of a source, used instead of the network (and required for "
        "sources that must be downloaded by hand).",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Downloads and extracted archives; empty means <home>/cache.",
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Folder with local model weights (diffusers folders, CoTIR checkpoints, "
        "metric weights); nothing is ever downloaded. Required by the full profile.",
    )
    train_steps: int | None = Field(
        default=None,
        ge=1,
        description="Length of the training runs the pipeline launches (every stage, warm-up "
        "and curriculum boundary scaled to it); empty keeps the variant's schedule (demo: 600).",
    )
    annotation_backend: Literal["template", "vllm"] | None = Field(
        default=None,
        description="Who writes the CoT annotations: deterministic templates (no network) or "
        "a vLLM server. Empty means template on the demo profile and vllm on full.",
    )
    vllm_urls: str = Field(
        default="",
        description="Comma-separated base URLs of vLLM servers (OpenAI-compatible API), "
        "e.g. http://gpu1:8000,http://gpu2:8000.",
    )
    vllm_model: str = Field(default="", description="Served model name, e.g. Qwen/Qwen2.5-VL-72B.")
    vllm_max_in_flight: int = Field(default=64, ge=1, le=4096)
    vllm_api_key: str | None = Field(
        default=None, repr=False, description="Bearer token of the vLLM servers, if any."
    )
    vllm_guided_decoding: GuidedDecodingField = Field(
        default="response_format",
        description="Request field that constrains answers to the JSON schema: "
        "response_format (OpenAI; every vLLM), structured_outputs (vLLM >= 0.10.2), "
        "guided_json (vLLM < 0.12), none.",
    )
    clip_model: str = Field(
        default="", description="open_clip architecture of the consistency filter, e.g. ViT-L-14."
    )
    clip_checkpoint: Path | None = Field(
        default=None, description="Local checkpoint file of COTIR_CLIP_MODEL (never downloaded)."
    )
    clip_threshold: float = Field(
        default=0.0, ge=-2.0, le=2.0, description="Minimum CLIP consistency score to keep."
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible server (Ceph radosgw, MinIO, ...); "
        "unset means AWS. Credentials come from the usual AWS_* variables or files.",
    )
    s3_region: str | None = Field(default=None, description="S3 region name.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default=store_defaults.DEFAULT_ADDRESSING_STYLE,
        description="path works with every S3-compatible server; virtual is AWS's default.",
    )
    executor: Literal["multiprocess", "in_process", "celery"] = Field(
        default="multiprocess",
        description="How Dagster runs the steps of a run: processes on this machine, one "
        "process, or Celery workers (Redis broker) on any number of machines.",
    )
    celery_broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker (Redis) for executor=celery."
    )
    celery_backend_url: str = Field(
        default="redis://127.0.0.1:6379/1", description="Celery result backend (Redis)."
    )
    gpu_assets: str = Field(
        default="filtered_annotations,cotir_checkpoint,restorations,metric_scores",
        description="Comma-separated asset names whose steps go to the Celery 'gpu' queue "
        "(every other step goes to 'cpu').",
    )
    store_max_attempts: int = Field(
        default=store_defaults.DEFAULT_MAX_ATTEMPTS,
        ge=1,
        le=20,
        description="Attempts per store request on transient errors.",
    )
    store_connect_timeout_s: float = Field(
        default=store_defaults.DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=300
    )
    store_read_timeout_s: float = Field(
        default=store_defaults.DEFAULT_READ_TIMEOUT_S, gt=0, le=3600
    )
    store_retry_budget_s: float = Field(
        default=store_defaults.DEFAULT_RETRY_BUDGET_S,
        ge=0,
        le=3600,
        description="How long a store operation keeps retrying transient errors (a restarting "
        "S3 gateway, throttling) before the step fails; 0 = only the request's own attempts.",
    )
    store_multipart_threshold_mib: int = Field(
        default=store_defaults.DEFAULT_MULTIPART_THRESHOLD_MIB,
        ge=5,
        le=5 * 1024,
        description="Objects at least this big upload in parts.",
    )
    store_multipart_part_mib: int = Field(
        default=store_defaults.DEFAULT_MULTIPART_PART_MIB,
        ge=5,
        le=5 * 1024,
        description="Part size of multipart uploads (S3 minimum 5).",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("celery_broker_url", "celery_backend_url", mode="after")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"expected redis://host:port/db, got {value!r}")
        return value

    @property
    def vllm_url_list(self) -> tuple[str, ...]:
        """The vLLM base URLs."""
        return tuple(url.strip().rstrip("/") for url in self.vllm_urls.split(",") if url.strip())

    @property
    def effective_annotation_backend(self) -> str:
        """The annotation backend in use (the profile decides when unset)."""
        if self.annotation_backend is not None:
            return self.annotation_backend
        return "template" if self.profile is Profile.DEMO else "vllm"

    @property
    def gpu_asset_names(self) -> frozenset[str]:
        """Asset names routed to the GPU queue."""
        return frozenset(name.strip() for name in self.gpu_assets.split(",") if name.strip())

    @field_validator("weights_dir", "mirror_dir", mode="after")
    @classmethod
    def _existing_folder(cls, value: Path | None) -> Path | None:
        if value is None or str(value) == "":
            return None
        resolved = value.expanduser().resolve()
        if not resolved.is_dir():
            raise ValueError(f"{resolved} is not a folder")
        return resolved

    @field_validator("s3_endpoint_url", mode="after")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://host[:port], got {value!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as error:
            raise ValueError(f"bad port in {value!r}") from error
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_store(self) -> CotirSettings:
        if self.effective_annotation_backend == "vllm":
            for url in self.vllm_url_list:
                if urlsplit(url).scheme not in ("http", "https"):
                    raise SettingsError(f"{env_name('vllm_urls')}: {url!r} is not an http(s) URL")
            if not self.vllm_url_list:
                raise SettingsError(
                    f"{env_name('vllm_urls')}: the vllm annotation backend needs at least one "
                    "server URL (or set COTIR_ANNOTATION_BACKEND=template)"
                )
            if not self.vllm_model:
                raise SettingsError(
                    f"{env_name('vllm_model')}: the vllm backend needs a served model name"
                )
        if bool(self.clip_model) != (self.clip_checkpoint is not None):
            raise SettingsError(
                f"{env_name('clip_checkpoint')}: set both COTIR_CLIP_MODEL and "
                "COTIR_CLIP_CHECKPOINT, or neither"
            )
        if self.clip_checkpoint is not None and not self.clip_checkpoint.is_file():
            raise SettingsError(
                f"{env_name('clip_checkpoint')}: {self.clip_checkpoint} is not a file"
            )
        if self.cache_dir is None or str(self.cache_dir) == "":
            object.__setattr__(self, "cache_dir", self.home / "cache")
        else:
            object.__setattr__(self, "cache_dir", self.cache_dir.expanduser().resolve())
        if not self.store:
            object.__setattr__(self, "store", (self.home / "store").as_uri())
        # Parse now so that a malformed URL fails at start, not at the first write.

        try:
            location = parse_store_url(self.store)
        except ValueError as error:
            raise SettingsError(f"{env_name('store')}: {error}") from None
        object.__setattr__(self, "store", location.url)
        return self


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def load_settings() -> CotirSettings:
    """Read and validate the settings from the environment.

    Raises :class:`SettingsError` with one line per bad variable, e.g.
    ``COTIR_PROFILE: input should be 'demo' or 'full' (got 'prod')``.
    """
    try:
        return CotirSettings()
    except SettingsError:
        raise
    except ValidationError as error:
        problems = []
        for item in error.errors():
            location = item.get("loc") or ()
            name = env_name(str(location[0])) if location else "COTIR_*"
            message = _first_line(str(item.get("msg", "invalid value")))
            message = message.removeprefix("Value error, ")
            if isinstance(item.get("ctx", {}).get("error"), SettingsError):
                problems.append(message)
                continue
            if location and "input" in item:
                given = os.environ.get(name)
                if given is not None and given not in message:
                    message = f"{message} (got {given!r})"
            problems.append(f"{name}: {message[:1].lower()}{message[1:]}")
        raise SettingsError("; ".join(problems)) from None
