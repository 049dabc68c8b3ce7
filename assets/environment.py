"""The provenance record of the environment the pipeline runs in."""

import hashlib
import json

import dagster as dg

from assets.execution import CELERY_QUEUE_TAG, CPU_QUEUE
from assets.resources import ObjectStoreResource, ProfileResource
from cotir_pipeline.provenance import collect_provenance

ENVIRONMENT_PREFIX = "provenance/environment"


@dg.asset(
    group_name="foundation",
    kinds={"python"},
    op_tags={CELERY_QUEUE_TAG: CPU_QUEUE},
    description="Code version, package versions and settings behind every result of this "
    "code location, stored content-addressed so each distinct environment is kept once.",
)
def pipeline_environment(
    context: dg.AssetExecutionContext, store: ObjectStoreResource, profile: ProfileResource
) -> dg.MaterializeResult:
    """Record the code and package versions that produce the pipeline's results."""
    provenance = collect_provenance(
        {"profile": profile.profile, "store": store.url, "s3_endpoint_url": store.s3_endpoint_url}
    )
    document = json.dumps(provenance.as_dict(), indent=2, sort_keys=True)
    digest = hashlib.sha256(document.encode("utf-8")).hexdigest()[:16]
    key = f"{ENVIRONMENT_PREFIX}/{digest}.json"
    object_store = store.open()
    written = not object_store.exists(key)
    if written:
        object_store.put_text(key, document)
    context.log.info(f"environment {digest}: {'written' if written else 'already stored'}")
    versions = "\n".join(
        f"| {name} | {version or 'not installed'} |"
        for name, version in sorted(provenance.packages.items())
    )
    return dg.MaterializeResult(
        metadata={
            "uri": dg.MetadataValue.url(object_store.uri(key)),
            "key": key,
            "digest": digest,
            "newly_written": written,
            "git_commit": provenance.git_commit or "unknown",
            "profile": profile.profile,
            "packages": dg.MetadataValue.md(f"| package | version |\n|---|---|\n{versions}"),
        },
        data_version=dg.DataVersion(digest),
    )


@dg.asset_check(asset=pipeline_environment, description="The stored record reads back intact.")
def pipeline_environment_readable(
    context: dg.AssetCheckExecutionContext, store: ObjectStoreResource
) -> dg.AssetCheckResult:
    """Read the latest materialization's record back from the store and verify its digest."""
    event = context.instance.get_latest_materialization_event(pipeline_environment.key)
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return dg.AssetCheckResult(passed=False, description="never materialized")
    key = str(materialization.metadata["key"].value)
    expected = str(materialization.metadata["digest"].value)
    document = store.open().get_text(key)
    actual = hashlib.sha256(document.encode("utf-8")).hexdigest()[:16]
    return dg.AssetCheckResult(
        passed=actual == expected, metadata={"key": key, "digest": actual, "expected": expected}
    )
