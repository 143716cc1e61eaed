"""Where a model's files are: the embedded default, a local Hugging Face folder, or a `.gguf`."""
from __future__ import annotations

from pathlib import Path

from infernetes.runtime.default_model import DEFAULT_MODEL_NAME, default_model_folder
from infernetes.runtime.gguf_convert import converted_folder


def resolve_model_folder(model: str | None) -> Path:
    """A folder with config.json, weights and tokenizer files for `model`."""
    if model is None:
        return default_model_folder()
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return converted_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return path
    if path.exists():
        raise ValueError(f"model {model!r} is neither a folder nor a .gguf file")
    raise FileNotFoundError(f"model {model!r} not found: pass a Hugging Face folder or a "
                            f".gguf file (or nothing, for {DEFAULT_MODEL_NAME})")


def default_served_name(model: str | None) -> str:
    if model is None:
        return DEFAULT_MODEL_NAME
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else path.name or str(model)
