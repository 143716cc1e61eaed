"""The record of what a DEST folder holds.

`DEST/.infernetes-download.json` exists only once a download completed: later pods and re-created
services reuse DEST without a network request when it names their source. While a download runs,
the same record (without `completedAt`) is kept at `DEST/.cache/infernetes/pending.json`, so an
interrupted download can be resumed, or cleaned up when DEST is reused for another source.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from infernetes.runtime.download.plan import DownloadPlan

MARKER_NAME = ".infernetes-download.json"
WORK_DIR = Path(".cache") / "infernetes"  # partial files and the pending record, under DEST
PENDING_NAME = "pending.json"


@dataclass(frozen=True)
class DownloadMarker:
    source: str                  # canonical source URI
    revision: str | None
    commit: str | None
    files: tuple[tuple[str, int], ...]  # (path relative to DEST, size in bytes)
    total_bytes: int
    completed_at: str | None     # ISO 8601, UTC; None while the download is in progress

    @classmethod
    def from_plan(cls, plan: DownloadPlan, completed_at: datetime | None) -> DownloadMarker:
        return cls(plan.source_uri, plan.revision, plan.commit,
                   tuple((f.path, f.size) for f in plan.files), plan.total_bytes,
                   None if completed_at is None
                   else completed_at.astimezone(timezone.utc).isoformat(timespec="seconds"))

    def covers(self, plan: DownloadPlan) -> bool:
        """Whether files this record lists are the ones `plan` wants (so they may be kept)."""
        return self.source == plan.source_uri and self.commit == plan.commit

    def to_json(self) -> dict:
        return {"source": self.source, "revision": self.revision, "commit": self.commit,
                "files": [{"path": path, "size": size} for path, size in self.files],
                "totalBytes": self.total_bytes, "completedAt": self.completed_at}

    @classmethod
    def from_json(cls, data: dict) -> DownloadMarker:
        return cls(str(data["source"]), data.get("revision"), data.get("commit"),
                   tuple((str(f["path"]), int(f["size"])) for f in data["files"]),
                   int(data["totalBytes"]), data.get("completedAt"))


def completed_marker(dest: Path) -> DownloadMarker | None:
    marker = _read(dest / MARKER_NAME)
    return marker if marker is not None and marker.completed_at is not None else None


def pending_marker(dest: Path) -> DownloadMarker | None:
    return _read(dest / WORK_DIR / PENDING_NAME)


def write_pending(dest: Path, plan: DownloadPlan) -> None:
    _write(dest / WORK_DIR / PENDING_NAME, DownloadMarker.from_plan(plan, None))


def write_completed(dest: Path, plan: DownloadPlan) -> DownloadMarker:
    marker = DownloadMarker.from_plan(plan, datetime.now(timezone.utc))
    _write(dest / MARKER_NAME, marker)
    return marker


def _read(path: Path) -> DownloadMarker | None:
    """The record at `path`; None when absent or unreadable (then DEST is treated as unknown)."""
    try:
        return DownloadMarker.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, marker: DownloadMarker) -> None:
    # Write then rename: a reader never sees half a record.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(marker.to_json(), indent=1) + "\n")
    os.replace(tmp, path)


def files_to_forget(records: list[DownloadMarker | None], plan: DownloadPlan) -> list[str]:
    """Paths, relative to DEST, that earlier downloads into DEST wrote and `plan` cannot keep:
    all of a record's files when it is for another source or commit (so a model's leftovers,
    say extra weight shards, never mix with the next model's files)."""
    stale = []
    for record in records:
        if record is not None and not record.covers(plan):
            stale.extend(path for path, _ in record.files)
    return sorted(set(stale))
