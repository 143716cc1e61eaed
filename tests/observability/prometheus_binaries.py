"""`prometheus` and `promtool` for the tests: from PATH when both are there, else Debian's
`prometheus` package fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the
cache (`$INFERNETES_CACHE/prometheus`, default ~/.cache/infernetes/prometheus), with no system
install. Later runs find the unpacked binaries and download nothing. The binaries are Go
programs that need only libc."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from infernetes.runtime.gguf_convert import cache_root

DEBIAN_PACKAGE = "prometheus"


@dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path
    source: str  # "PATH" or the cache folder they were unpacked into


def find_or_fetch() -> PrometheusBinaries:
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if all(on_path):
        binaries = PrometheusBinaries(Path(on_path[0]), Path(on_path[1]), "PATH")
    else:
        folder = cache_root() / "prometheus"
        if not _unpacked(folder):
            _fetch_into(folder)
        binaries = PrometheusBinaries(folder / "usr/bin/prometheus", folder / "usr/bin/promtool",
                                      str(folder))
    for binary in (binaries.prometheus, binaries.promtool):
        _check_runs(binary)
    return binaries


def _unpacked(folder: Path) -> bool:
    return all(os.access(folder / "usr/bin" / name, os.X_OK)
               for name in ("prometheus", "promtool"))


def _fetch_into(folder: Path) -> None:
    """Download and unpack in a private folder, then rename it into place: a concurrent run
    sees either nothing or a complete tree."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".prometheus-"))
    try:
        deb = _apt_download(work)
        tree = work / "tree"
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        try:
            tree.rename(folder)
        except OSError:  # another run put it there first
            if not _unpacked(folder):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _apt_download(folder: Path) -> Path:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("prometheus and promtool are not on PATH, and this machine has no "
                           "apt-get/dpkg-deb to fetch Debian's `prometheus` package: install "
                           "Prometheus 2.x (both binaries) on PATH")
    download = ["apt-get", "download", "-q", DEBIAN_PACKAGE]
    result = subprocess.run(download, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:  # a fresh image has no package lists yet
        _run(["apt-get", "update", "-q"])
        result = subprocess.run(download, cwd=folder, capture_output=True, text=True)
    debs = list(folder.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(f"`apt-get download {DEBIAN_PACKAGE}` failed: "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return debs[0]


def _check_runs(binary: Path) -> None:
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{binary} --version failed ({result.returncode}): "
                           f"{result.stderr.strip()} (missing shared libraries? see `ldd`)")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
