"""Dagster resources: typed wrappers over the domain library's external systems."""

from typing import Self

import dagster as dg
from pydantic import Field

from cotir_pipeline.settings import CotirSettings, Profile
from cotir_pipeline.store import ObjectStore, StoreError, open_store, remove_leftovers


class ObjectStoreResource(dg.ConfigurableResource):
    """The object store every stage writes through (a local folder or S3)."""

    url: str = Field(description="file:///abs/path or s3://bucket/prefix (COTIR_STORE).")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (COTIR_S3_ENDPOINT_URL); None = AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region (COTIR_S3_REGION).")
    s3_addressing_style: str = Field(default="path", description="path, virtual or auto.")
    max_attempts: int = Field(default=6, description="Attempts per request on transient errors.")
    connect_timeout_s: float = Field(default=10.0, description="COTIR_STORE_CONNECT_TIMEOUT_S.")
    read_timeout_s: float = Field(default=120.0, description="COTIR_STORE_READ_TIMEOUT_S.")
    retry_budget_s: float = Field(
        default=30.0, description="COTIR_STORE_RETRY_BUDGET_S: how long an outage is ridden out."
    )
    multipart_threshold_mib: int = Field(default=64, description="Upload in parts from here.")
    multipart_part_mib: int = Field(default=16, description="Part size of multipart uploads.")

    @classmethod
    def from_settings(cls, settings: CotirSettings) -> Self:
        """The resource for the store the settings name."""
        return cls(
            url=settings.store,
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            s3_addressing_style=settings.s3_addressing_style,
            max_attempts=settings.store_max_attempts,
            connect_timeout_s=settings.store_connect_timeout_s,
            read_timeout_s=settings.store_read_timeout_s,
            retry_budget_s=settings.store_retry_budget_s,
            multipart_threshold_mib=settings.store_multipart_threshold_mib,
            multipart_part_mib=settings.store_multipart_part_mib,
        )

    def open(self) -> ObjectStore:
        """A client for the store; no network until the first request."""
        settings = CotirSettings(
            store=self.url,
            s3_endpoint_url=self.s3_endpoint_url,
            s3_region=self.s3_region,
            s3_addressing_style=self.s3_addressing_style,  # type: ignore[arg-type]
            store_max_attempts=self.max_attempts,
            store_connect_timeout_s=self.connect_timeout_s,
            store_read_timeout_s=self.read_timeout_s,
            store_retry_budget_s=self.retry_budget_s,
            store_multipart_threshold_mib=self.multipart_threshold_mib,
            store_multipart_part_mib=self.multipart_part_mib,
        )
        return open_store(settings)

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

    @classmethod
    def from_settings(cls, settings: CotirSettings) -> Self:
        """The resource for the loaded settings."""
        return cls(profile=settings.profile.value, home=str(settings.home))

    @property
    def is_demo(self) -> bool:
        """Whether the embedded demo profile is active."""
        return self.profile == Profile.DEMO.value


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
