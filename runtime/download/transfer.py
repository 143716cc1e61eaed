"""Moving one file's bytes into DEST so that an interrupted transfer resumes where it stopped.

A file is written to `DEST/.cache/infernetes/partial/<path>.<version>.part` and renamed to
`DEST/<path>` once it has all its bytes; so a file at its final path with the planned size is
complete. A rerun (or an in-process retry) asks the source for the bytes from the partial
file's size on (an HTTP `Range: bytes=N-` request for the hub).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from infernetes.runtime.download.failures import DownloadError, DownloadFailure
from infernetes.runtime.download.marker import WORK_DIR
from infernetes.runtime.download.plan import PlannedFile, path_inside

# (offset the chunks start at, the chunks). The offset is the one asked for, or 0 when the
# source could only send the whole file (a server that ignores Range).
ChunkStream = tuple[int, Iterator[bytes]]
# Opens `file` from `offset` on.
Fetch = Callable[[PlannedFile, int], ContextManager[ChunkStream]]


def final_path(dest: Path, file: PlannedFile) -> Path:
    return path_inside(dest, file.path)


def partial_path(dest: Path, file: PlannedFile) -> Path:
    return path_inside(dest / WORK_DIR / "partial", f"{file.path}.{file.version[:16]}.part")


def bytes_present(dest: Path, file: PlannedFile) -> int:
    """How many of `file`'s bytes DEST already has: all when it is at its final path with the
    planned size, else what its partial file holds."""
    final = final_path(dest, file)
    if final.is_file() and final.stat().st_size == file.size:
        return file.size
    partial = partial_path(dest, file)
    return min(partial.stat().st_size, file.size) if partial.is_file() else 0


def transfer_file(dest: Path, file: PlannedFile, fetch: Fetch,
                  on_bytes: Callable[[int], None]) -> int:
    """Complete `file` in DEST; returns the bytes moved (0 when it was there already)."""
    final = final_path(dest, file)
    if final.is_file() and final.stat().st_size == file.size:
        return 0
    partial = partial_path(dest, file)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.touch()
    offset = partial.stat().st_size
    if offset > file.size:  # not this content after all: start over
        offset = 0
    moved = 0
    if offset < file.size:
        with fetch(file, offset) as (start, chunks), open(partial, "r+b") as out:
            out.truncate(start)
            out.seek(start)
            if start != offset:
                on_bytes(start - offset)  # the source restarted the file: those bytes are gone
            for chunk in chunks:
                out.write(chunk)
                moved += len(chunk)
                on_bytes(len(chunk))
    size = partial.stat().st_size
    if size != file.size:
        raise DownloadError(DownloadFailure.NetworkError,
                            f"{file.path}: got {size} of {file.size} bytes; the transfer "
                            f"ended early")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
    return moved

