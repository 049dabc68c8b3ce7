"""Files from a Hugging Face Hub dataset repository (huggingface_hub)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cotir_pipeline.sources.fetch.base import (
    FetchResult,
    SourceFetcher,
    error_reason,
)
from cotir_pipeline.sources.spec import (
    HubFetch,
)

_TRUTHY = ("1", "true", "yes", "on")

# -- hub ---------------------------------------------------------------------------------


class HubFetcher(SourceFetcher):
    """A snapshot of a hub repository (huggingface_hub), or its copy in the mirror folder."""

    method = "hub"
    spec: HubFetch

    def fetch(self) -> FetchResult:
        mirrored = self.mirror_files(self.spec.allow_patterns)
        if mirrored:
            return self.materialize(self.local_files(mirrored, from_mirror=True))
        local_dir = self.source_dir / "hub"
        self._snapshot(local_dir)
        entries: list[tuple[str, Path]] = []
        for directory, subdirectories, names in os.walk(local_dir):
            subdirectories[:] = sorted(d for d in subdirectories if d != ".cache")
            for file_name in sorted(names):
                path = Path(directory) / file_name
                if path.is_file():
                    entries.append((path.relative_to(local_dir).as_posix(), path))
        if not entries:
            patterns = self.spec.allow_patterns
            raise self.error(
                f"the hub repository {self.spec.repo_id!r} has no files"
                + (f" matching {patterns}" if patterns else "")
            )
        return self.materialize(self.local_files(entries, from_mirror=False))

    def _snapshot(self, local_dir: Path) -> None:
        """Download (or re-check) the snapshot; hub errors become a clear FetchError."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        transport: tuple[type[BaseException], ...] = ()
        with contextlib.suppress(ImportError):
            import httpx2  # the HTTP client huggingface_hub uses

            transport = (httpx2.HTTPError,)
        # Read at call time: huggingface_hub reads these once, when it is first imported.
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY
        endpoint = os.environ.get("HF_ENDPOINT") or None
        what = f"{self.spec.repo_type} {self.spec.repo_id!r}"
        if self.spec.revision:
            what += f" at revision {self.spec.revision!r}"
        local_dir.mkdir(parents=True, exist_ok=True)
        try:
            snapshot_download(
                self.spec.repo_id,
                repo_type=self.spec.repo_type,
                revision=self.spec.revision,
                allow_patterns=self.spec.allow_patterns,
                local_dir=local_dir,
                local_files_only=offline,
                endpoint=endpoint,
            )
        except GatedRepoError:
            raise self.error(
                f"the hub {what} is gated: accept its terms on the hub and set HF_TOKEN, "
                f"or {self.mirror_hint()}"
            ) from None
        except RevisionNotFoundError:
            raise self.error(f"the hub has no {what}: check 'revision' in the catalog") from None
        except RepositoryNotFoundError:
            raise self.error(
                f"the hub {what} was not found or is private (set HF_TOKEN if it is private)"
            ) from None
        except HFValidationError as error:
            raise self.error(f"invalid hub repository id or revision for {what}: {error}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, *transport) as error:
            why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline else error_reason(error)
            raise self.error(
                f"cannot reach the hub ({endpoint or 'huggingface.co'}) for {what}: {why}; "
                f"no complete copy is in {local_dir}. Instead, {self.mirror_hint()}"
            ) from None
