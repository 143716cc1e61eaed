"""`download_model`: fill a DEST folder with a model's files, resumably, once.

Order of work: a complete marker for the same source ends it (no network request); else list
the source, forget what an earlier download of another source left in DEST, check free space
for the bytes still missing, transfer file by file (resuming partial files), write the marker.
A NetworkError retries that whole sequence, which resumes where the failed attempt stopped.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infernetes.runtime.download.failures import DownloadError, classify
from infernetes.runtime.download.local import link_local_files, local_fetch, plan_local_copy
from infernetes.runtime.download.marker import (
    MARKER_NAME, WORK_DIR, DownloadMarker, completed_marker, files_to_forget, pending_marker,
    write_completed, write_pending)
from infernetes.runtime.download.plan import DownloadPlan, path_inside
from infernetes.runtime.download.progress import NoProgress, ProgressSink
from infernetes.runtime.download.retry import with_network_retries
from infernetes.runtime.download.source import (
    DEFAULT_PVC_ROOT, HubSource, LocalSource, ModelSource, parse_model_source)
from infernetes.runtime.download.space import check_free_space
from infernetes.runtime.download.transfer import Fetch, bytes_present, transfer_file


@dataclass(frozen=True)
class DownloadOptions:
    include: tuple[str, ...] = ()  # fnmatch patterns: fetch only matching files (selection.py)
    token: str | None = None       # Hub token; None: huggingface_hub's (HF_TOKEN, stored login)
    pvc_root: Path = DEFAULT_PVC_ROOT  # where pvc://CLAIM is mounted: <pvc_root>/CLAIM
    link: bool = False             # hard-link local files instead of copying, when possible
    retries: int = 5               # further attempts after a NetworkError
    retry_delay_seconds: float = 2.0  # first backoff delay; doubled on each retry
    progress: ProgressSink = field(default_factory=NoProgress)
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class DownloadResult:
    source: str                # canonical source URI
    dest: Path
    commit: str | None         # the Hub commit the files are from
    files: tuple[str, ...]     # paths relative to dest
    total_bytes: int
    bytes_transferred: int     # by this call; 0 when reused
    reused: bool               # a complete marker for this source was there: nothing was done


def download_model(source: ModelSource, dest: Path,
                   options: DownloadOptions = DownloadOptions()) -> DownloadResult:
    """Raises DownloadError (typed by DownloadFailure) on failure."""
    dest = Path(dest)
    marker = completed_marker(dest)
    if marker is not None and marker.source == source.uri and _all_present(dest, marker):
        return DownloadResult(source.uri, dest, marker.commit,
                              tuple(path for path, _ in marker.files), marker.total_bytes, 0,
                              reused=True)
    return with_network_retries(lambda: _attempt(source, dest, options),
                                retries=options.retries,
                                base_delay_seconds=options.retry_delay_seconds,
                                sleep=options.sleep)


def cached_hub_model(uri: str, options: DownloadOptions = DownloadOptions()) -> Path:
    """The folder holding the `hf://` model `uri`, fetched on first use into
    `<cache root>/hub/<org>--<name>--<revision>` (the cache root of gguf_convert.cache_root:
    `INFERNETES_CACHE`, else ~/.cache/infernetes)."""
    from infernetes.runtime.gguf_convert import cache_root  # imports torch: only when used

    source = parse_model_source(uri)
    if not isinstance(source, HubSource):
        raise ValueError(f"model {uri!r} is not a Hub source (hf://ORG/NAME[@REVISION])")
    org, name = source.repo_id.split("/")
    folder = cache_root() / "hub" / f"{org}--{name}--{source.revision.replace('/', '--')}"
    download_model(source, folder, options)
    return folder


def _attempt(source: ModelSource, dest: Path, options: DownloadOptions) -> DownloadResult:
    try:
        return _download(source, dest, options)
    except DownloadError:
        raise
    except Exception as e:
        failure = classify(e)
        if failure is None:
            raise
        raise failure from e


def _download(source: ModelSource, dest: Path, options: DownloadOptions) -> DownloadResult:
    plan, fetch, local_root = _read_source(source, options)
    dest.mkdir(parents=True, exist_ok=True)
    _forget_other_downloads(dest, plan)
    write_pending(dest, plan)
    files = plan.files
    if local_root is not None and options.link:
        files = link_local_files(local_root, files, dest)
    missing = sum(f.size - bytes_present(dest, f) for f in files)
    check_free_space(dest, missing)
    options.progress.start(plan.total_bytes, plan.total_bytes - missing)
    moved = sum(transfer_file(dest, f, fetch, options.progress.advance) for f in files)
    write_completed(dest, plan)
    shutil.rmtree(dest / WORK_DIR, ignore_errors=True)
    return DownloadResult(plan.source_uri, dest, plan.commit, tuple(f.path for f in plan.files),
                          plan.total_bytes, moved, reused=False)


def _read_source(source: ModelSource,
                 options: DownloadOptions) -> tuple[DownloadPlan, Fetch, Path | None]:
    """The plan, how to read its files, and the local root they are read from (None: remote)."""
    if isinstance(source, HubSource):
        from infernetes.runtime.download.hub import hub_fetch, plan_hub_download

        plan = plan_hub_download(source, options.include, options.token)
        return plan, hub_fetch(source, plan.commit, options.token), None
    root = source.path if isinstance(source, LocalSource) else source.local_path(options.pvc_root)
    return plan_local_copy(root, source.uri, options.include), local_fetch(root), root


def _all_present(dest: Path, marker: DownloadMarker) -> bool:
    """The marker's files are still there with their sizes (a stat each; contents are not
    re-read)."""
    for path, size in marker.files:
        file = path_inside(dest, path)
        if not file.is_file() or file.stat().st_size != size:
            return False
    return True


def _forget_other_downloads(dest: Path, plan: DownloadPlan) -> None:
    """Delete what earlier downloads of another source (or commit) wrote, and the marker: from
    here until the end, DEST is not a complete copy of anything."""
    stale = files_to_forget([completed_marker(dest), pending_marker(dest)], plan)
    for path in stale:
        path_inside(dest, path).unlink(missing_ok=True)
    if stale:
        shutil.rmtree(dest / WORK_DIR, ignore_errors=True)
    (dest / MARKER_NAME).unlink(missing_ok=True)
