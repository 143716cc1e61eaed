"""Free space on DEST, checked before any transfer so a too-small volume fails at once."""
from __future__ import annotations

import shutil
from pathlib import Path

from infernetes.runtime.download.failures import DownloadError, DownloadFailure


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_free_space(dest: Path, needed_bytes: int) -> None:
    """DiskFull when the filesystem of `dest` (an existing folder) has less than `needed_bytes`
    free."""
    free = free_bytes(dest)
    if needed_bytes > free:
        raise DownloadError(
            DownloadFailure.DiskFull,
            f"{dest} needs {needed_bytes} more bytes ({_gib(needed_bytes)}) but its filesystem "
            f"has {free} free ({_gib(free)})")


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"
