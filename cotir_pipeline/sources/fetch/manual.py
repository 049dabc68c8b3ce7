"""Sources that must be downloaded by hand: found in the local mirror, or a clear
error that says where to put them."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from cotir_pipeline.sources.fetch.base import (
    MIRROR_DIR_SETTING,
    FetchResult,
    ManualDownloadRequired,
    SourceFetcher,
)
from cotir_pipeline.sources.spec import (
    ManualFetch,
)

# -- manual ------------------------------------------------------------------------------


class ManualMirrorFetcher(SourceFetcher):
    """Files the user downloads by hand into ``mirror_dir/<name>/``."""

    method = "manual"
    spec: ManualFetch

    def fetch(self) -> FetchResult:
        patterns = [self._pattern(p) for p in self.spec.expected_files]
        folder = self.mirror_folder
        if folder is None:
            raise ManualDownloadRequired(
                self.name,
                f"manual download required. {self.spec.instructions.strip()}\n"
                f"No mirror folder is configured: set {MIRROR_DIR_SETTING} to a folder and put "
                f"the files into <{MIRROR_DIR_SETTING}>/{self.name}/ (expected: "
                f"{', '.join(patterns)}).",
                folder=None,
                missing=patterns,
            )
        matched: dict[str, Path] = {}
        missing: list[str] = []
        for pattern in patterns:
            hits = sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
            if not hits:
                missing.append(pattern)
            for path in hits:
                matched.setdefault(path.relative_to(folder).as_posix(), path)
        if missing:
            raise ManualDownloadRequired(
                self.name,
                f"manual download required. {self.spec.instructions.strip()}\n"
                f"Put the files into {folder}/ ; missing there: {', '.join(missing)}.",
                folder=folder,
                missing=missing,
            )
        # expected_files are spot checks; the splits' globs say which files the pairing
        # reads (a glob may match nothing here when its files sit inside an archive).
        for pattern in dict.fromkeys(self._pattern(p) for p in self.layout_globs):
            for path in sorted(p for p in folder.glob(pattern) if p.is_file()):
                matched.setdefault(path.relative_to(folder).as_posix(), path)
        return self.materialize(self.local_files(sorted(matched.items()), from_mirror=True))

    def _pattern(self, pattern: str) -> str:
        parts = PurePosixPath(pattern).parts
        if not parts or pattern.startswith("/") or ".." in parts:
            raise self.error(f"expected_files pattern {pattern!r} must be relative, without '..'")
        return pattern
