"""Where a model's files are: the embedded default, a local Hugging Face folder, a `.gguf`,
or a Hub repository (`hf://ORG/NAME[@REVISION]`, fetched once into the local cache)."""
from __future__ import annotations

from pathlib import Path

from infernetes.runtime.config import ConfigError
from infernetes.runtime.default_model import DEFAULT_MODEL_NAME, default_model_folder
from infernetes.runtime.gguf_convert import converted_folder

HUB_SCHEME = "hf://"


def resolve_model_folder(model: str | None, revision: str | None = None) -> Path:
    """A folder with config.json, weights and tokenizer files for `model`. Fetching a Hub
    model raises DownloadError (typed: AuthFailed, NotFound, DiskFull, NetworkError)."""
    if model is None:
        return default_model_folder()
    if model.startswith(HUB_SCHEME):
        from infernetes.runtime.download.download import cached_hub_model
        return cached_hub_model(hub_uri(model, revision))
    if revision is not None:
        raise ConfigError(f"--revision applies to hf:// models only, not to {model!r}")
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        return converted_folder(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return path
    if path.exists():
        raise ValueError(f"model {model!r} is neither a folder nor a .gguf file")
    raise FileNotFoundError(f"model {model!r} not found: pass a Hugging Face folder, a .gguf "
                            f"file or hf://ORG/NAME[@REVISION] (or nothing, for "
                            f"{DEFAULT_MODEL_NAME})")


def hub_uri(model: str, revision: str | None) -> str:
    """`model` with --revision applied; a revision in both places must agree."""
    repo, at, in_uri = model.partition("@")
    if revision is None or not at:
        return model if revision is None else f"{repo}@{revision}"
    if in_uri != revision:
        raise ConfigError(f"--revision {revision} contradicts the revision in {model}")
    return model


def default_served_name(model: str | None) -> str:
    """The name clients use: the Hub id for hf:// models (as vLLM serves them), else the
    folder or file name."""
    if model is None:
        return DEFAULT_MODEL_NAME
    if model.startswith(HUB_SCHEME):
        return model.removeprefix(HUB_SCHEME).partition("@")[0]
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else path.name or str(model)
