"""Fetching a model into a folder: `infernetes download SOURCE DEST` and its Python API."""
from infernetes.runtime.download.download import (
    DownloadOptions, DownloadResult, cached_hub_model, download_model)
from infernetes.runtime.download.failures import EXIT_CODES, DownloadError, DownloadFailure
from infernetes.runtime.download.source import (
    HubSource, LocalSource, ModelSource, PVCSource, parse_model_source)

__all__ = [
    "DownloadError", "DownloadFailure", "DownloadOptions", "DownloadResult", "EXIT_CODES",
    "HubSource", "LocalSource", "ModelSource", "PVCSource", "cached_hub_model", "download_model",
    "parse_model_source",
]
