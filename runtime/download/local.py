"""Reading a model from a local path (a mounted PersistentVolumeClaim, or any folder or file).

A folder's files are selected as a Hub repository's are (selection.py), and copied; a single
file (a `.gguf`) is copied as is. With `link`, files are hard-linked instead when DEST is on
the same filesystem (no space used, instant; the two paths then share one inode, so writing
to one changes the other); files that cannot be linked are copied.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from infernetes.runtime.download.failures import DownloadError, DownloadFailure
from infernetes.runtime.download.plan import DownloadPlan, PlannedFile, path_inside
from infernetes.runtime.download.selection import select_model_files
from infernetes.runtime.download.transfer import ChunkStream, Fetch, final_path

CHUNK_BYTES = 1 << 20
# A hard link is impossible (other filesystem, or a filesystem without them): copy instead.
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


def plan_local_copy(root: Path, source_uri: str, include: tuple[str, ...]) -> DownloadPlan:
    if root.is_file():
        files = [_planned(root.name, root)]
    elif root.is_dir():
        found = dict(_walk_files(root))
        files = [_planned(name, found[name]) for name in select_model_files(found, include)]
        if not files:
            raise DownloadError(DownloadFailure.NotFound,
                                f"{root} ({source_uri}) has no files to copy"
                                + (f" matching {list(include)}" if include else ""))
    else:
        raise DownloadError(DownloadFailure.NotFound, f"{root} ({source_uri}) does not exist")
    return DownloadPlan(source_uri, None, None, tuple(files))


def source_file(root: Path, file: PlannedFile) -> Path:
    return root if root.is_file() else path_inside(root, file.path)


def local_fetch(root: Path) -> Fetch:
    @contextlib.contextmanager
    def fetch(file: PlannedFile, offset: int) -> Iterator[ChunkStream]:
        with open(source_file(root, file), "rb") as stream:
            stream.seek(offset)
            yield offset, iter(lambda: stream.read(CHUNK_BYTES), b"")

    return fetch


def link_local_files(root: Path, files: tuple[PlannedFile, ...],
                     dest: Path) -> tuple[PlannedFile, ...]:
    """Hard-links what it can into DEST; returns the files left to copy."""
    left = []
    for file in files:
        source, final = source_file(root, file), final_path(dest, file)
        if final.exists() and os.path.samefile(source, final):
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".link-tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError as e:
            if e.errno not in _CANNOT_LINK:
                raise
            left.append(file)
            continue
        os.replace(tmp, final)
    return tuple(left)


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(POSIX path relative to root, path) of each regular file, following file symlinks (a
    Hugging Face cache snapshot is made of them) but not folder symlinks (no cycles)."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                yield path.relative_to(root).as_posix(), path


def _planned(relative: str, path: Path) -> PlannedFile:
    stat = path.stat()
    return PlannedFile(relative, stat.st_size, f"{stat.st_size:x}-{stat.st_mtime_ns:x}")
