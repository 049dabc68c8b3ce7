"""The single Definitions object of the cotir code location (``dagster dev -w workspace.yaml``).

It only assembles: settings are read and validated when Dagster loads the code
location (not at import), and resources are picked by the profile.
"""

import dagster as dg

from assets import environment
from assets.resources import ObjectStoreResource, ProfileResource
from cotir_pipeline.settings import CotirSettings, load_settings

#: Materializes every asset of the DAG; the README's first command runs it.
demo_job = dg.define_asset_job(
    name="demo",
    selection=dg.AssetSelection.all(),
    description="Every asset of the DAG, end to end (on the demo profile: minutes on a CPU).",
)


def build_definitions(settings: CotirSettings) -> dg.Definitions:
    """The code location for the given settings (tests pass their own)."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([environment]),
        asset_checks=dg.load_asset_checks_from_modules([environment]),
        jobs=[demo_job],
        resources={
            "store": ObjectStoreResource.from_settings(settings),
            "profile": ProfileResource.from_settings(settings),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Entry point Dagster calls when it loads the code location."""
    return build_definitions(load_settings())
