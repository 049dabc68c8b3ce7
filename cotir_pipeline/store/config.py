"""How to reach the object store: one small frozen record, the only input of ``open_store``.

Built once from the settings (:meth:`StoreConfig.from_settings`) and passed on as it
is: to the Dagster resource, to the CLI, and to the trainer subprocess, which receives
it whole in one environment variable (:data:`STORE_CONFIG_VARIABLE`). Opening a store
therefore never re-reads unrelated settings, and no field is lost on the way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cotir_pipeline.settings import CotirSettings

#: Environment variable that carries a whole StoreConfig (JSON) to a subprocess.
STORE_CONFIG_VARIABLE = "COTIR_STORE_CONFIG"

DEFAULT_ADDRESSING_STYLE = "path"
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 120.0
DEFAULT_RETRY_BUDGET_S = 30.0
DEFAULT_MULTIPART_THRESHOLD_MIB = 64
DEFAULT_MULTIPART_PART_MIB = 16


@dataclass(frozen=True)
class StoreConfig:
    """The store's URL and every client setting (the ``COTIR_STORE*``/``COTIR_S3_*`` ones)."""

    url: str
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_addressing_style: str = DEFAULT_ADDRESSING_STYLE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    retry_budget_s: float = DEFAULT_RETRY_BUDGET_S
    multipart_threshold_mib: int = DEFAULT_MULTIPART_THRESHOLD_MIB
    multipart_part_mib: int = DEFAULT_MULTIPART_PART_MIB

    @classmethod
    def from_settings(cls, settings: CotirSettings) -> StoreConfig:
        """The store the settings name, with their client settings (already validated)."""
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

    def at(self, url: str) -> StoreConfig:
        """The same client settings for another location (a prefix, another bucket)."""
        return dataclasses.replace(self, url=url)

    def to_json(self) -> str:
        """The record as JSON (what :data:`STORE_CONFIG_VARIABLE` holds)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StoreConfig:
        """The record :meth:`to_json` wrote; a ValueError names unknown or missing fields."""
        values: Any = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{STORE_CONFIG_VARIABLE}: expected a JSON object")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{STORE_CONFIG_VARIABLE}: unknown fields {unknown}")
        if "url" not in values:
            raise ValueError(f"{STORE_CONFIG_VARIABLE}: no url")
        return cls(**values)

    def environment(self) -> dict[str, str]:
        """The environment that hands this record to a subprocess."""
        return {STORE_CONFIG_VARIABLE: self.to_json()}


def inherited_store_config(url: str, environ: Mapping[str, str] | None = None) -> StoreConfig:
    """The store config a subprocess was handed, at ``url``.

    Without :data:`STORE_CONFIG_VARIABLE` (a command started by hand), the client
    settings come from the ``COTIR_*`` variables as everywhere else.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(STORE_CONFIG_VARIABLE)
    if text:
        return StoreConfig.from_json(text).at(url)
    from cotir_pipeline.settings import CotirSettings

    return StoreConfig.from_settings(CotirSettings(store=url))
