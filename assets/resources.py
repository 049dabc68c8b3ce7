"""Dagster resources: typed wrappers over the domain library's external systems."""

import dataclasses
from typing import Self

import dagster as dg
from pydantic import Field

from cotir_pipeline.settings import CotirSettings, Profile
from cotir_pipeline.store import (
    ObjectStore,
    StoreConfig,
    StoreError,
    open_store,
    remove_leftovers,
)
from cotir_pipeline.store import config as config_defaults


class ObjectStoreResource(dg.ConfigurableResource):
    """The object store every stage writes through (a local folder or S3).

    Its fields are those of :class:`~cotir_pipeline.store.StoreConfig`, editable in the UI.
    """

    url: str = Field(description="file:///abs/path or s3://bucket/prefix (COTIR_STORE).")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (COTIR_S3_ENDPOINT_URL); None = AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region (COTIR_S3_REGION).")
    s3_addressing_style: str = Field(
        default=config_defaults.DEFAULT_ADDRESSING_STYLE, description="path, virtual or auto."
    )
    max_attempts: int = Field(
        default=config_defaults.DEFAULT_MAX_ATTEMPTS,
        description="Attempts per request on transient errors.",
    )
    connect_timeout_s: float = Field(
        default=config_defaults.DEFAULT_CONNECT_TIMEOUT_S,
        description="COTIR_STORE_CONNECT_TIMEOUT_S.",
    )
    read_timeout_s: float = Field(
        default=config_defaults.DEFAULT_READ_TIMEOUT_S, description="COTIR_STORE_READ_TIMEOUT_S."
    )
    retry_budget_s: float = Field(
        default=config_defaults.DEFAULT_RETRY_BUDGET_S,
        description="COTIR_STORE_RETRY_BUDGET_S: how long an outage is ridden out.",
    )
    multipart_threshold_mib: int = Field(
        default=config_defaults.DEFAULT_MULTIPART_THRESHOLD_MIB,
        description="Upload in parts from here.",
    )
    multipart_part_mib: int = Field(
        default=config_defaults.DEFAULT_MULTIPART_PART_MIB,
        description="Part size of multipart uploads.",
    )

    @classmethod
    def from_settings(cls, settings: CotirSettings) -> Self:
        """The resource for the store the settings name."""
        return cls(**dataclasses.asdict(StoreConfig.from_settings(settings)))

    def config(self) -> StoreConfig:
        """The store's config, as :func:`open_store` and the trainer subprocess take it."""
        return StoreConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(StoreConfig)}
        )

    def open(self) -> ObjectStore:
        """A client for the store; no network until the first request."""
        return open_store(self.config())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Fail the step at once, with the setting to fix, if the store is unusable."""
        try:
            self.open().check()
        except StoreError as error:
            raise dg.Failure(description=str(error), allow_retries=False) from None


class ProfileResource(dg.ConfigurableResource):
    """Which profile (demo or full) the code location was loaded with."""

    profile: str = Field(default=Profile.DEMO.value, description="COTIR_PROFILE: demo or full.")
    home: str = Field(description="COTIR_HOME: local working folder (caches, default store).")


def clear_leftovers(
    object_store: ObjectStore, prefix: str, context: dg.AssetExecutionContext
) -> list[str]:
    """Before a partition runs again: remove what killed runs left for it (partial files,
    unfinished uploads, scratch folders of ended processes) and log what went."""
    removed = remove_leftovers(object_store, prefix)
    if removed:
        context.log.info(
            f"removed {len(removed)} leftover(s) of killed runs: {', '.join(removed[:5])}"
            + (" ..." if len(removed) > 5 else "")
        )
    return removed
