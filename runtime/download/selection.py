"""Which of a model repository's files to fetch. Pure."""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable, Sequence

# Other frameworks' copies of the weights: dead weight once `*.safetensors` are there.
UNNEEDED_WITH_SAFETENSORS = (
    "*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot",
    "*.onnx", "*.onnx_data", "*.tflite", "*.gguf",
)


def select_model_files(paths: Iterable[str], include: Sequence[str] = ()) -> list[str]:
    """The repository paths to fetch, sorted.

    Hidden files and folders (`.gitattributes`, `.git/`, `.cache/`) are never fetched. With
    `include` patterns (fnmatch on the whole path, `*` also matching `/`, as huggingface_hub's
    `allow_patterns`), exactly the matching files are fetched; without them, all files, less
    UNNEEDED_WITH_SAFETENSORS when the repository has `*.safetensors`."""
    visible = sorted(p for p in paths if not any(part.startswith(".") for part in p.split("/")))
    if include:
        return [p for p in visible if any(fnmatch(p, pattern) for pattern in include)]
    if not any(p.endswith(".safetensors") for p in visible):
        return visible
    return [p for p in visible
            if not any(fnmatch(p, pattern) for pattern in UNNEEDED_WITH_SAFETENSORS)]
