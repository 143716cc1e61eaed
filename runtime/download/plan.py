"""What a download will put in DEST: the contract between the source readers (hub.py,
local.py) and the transfer (transfer.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PlannedFile:
    path: str     # POSIX path relative to DEST (and to the source root)
    size: int     # bytes
    version: str  # what identifies this content (git blob id, LFS sha256, size and mtime);
                  # it names the partial file, so a changed file never resumes a stale one


@dataclass(frozen=True)
class DownloadPlan:
    source_uri: str                # canonical, as ModelSource.uri
    revision: str | None           # as asked for (hub only)
    commit: str | None             # what the revision resolved to (hub only)
    files: tuple[PlannedFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def path_inside(root: Path, relative: str) -> Path:
    """`root / relative`, refusing a path that would leave `root` (absolute, or with `..`)."""
    parts = relative.split("/")
    if relative.startswith("/") or ".." in parts or "" in parts:
        raise ValueError(f"file path {relative!r} would leave {root}")
    return root.joinpath(*parts)
