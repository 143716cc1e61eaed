"""Reading a model from the Hugging Face Hub through huggingface_hub: its repository listing
(`HfApi.model_info`), its URLs, auth headers (a token passed in, else `HF_TOKEN` or the stored
login), HTTP client and typed errors. The endpoint is huggingface_hub's `HF_ENDPOINT` setting.

The file bodies are streamed here rather than by `hf_hub_download`: since huggingface_hub 2.x
that writes each file to a process-unique temporary file and deletes it on failure, so an
interrupted download starts over. Here a file is fetched by the resolved commit with
`Range: bytes=N-` from what DEST already holds (see transfer.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from infernetes.runtime.download.failures import DownloadError, DownloadFailure
from infernetes.runtime.download.plan import DownloadPlan, PlannedFile
from infernetes.runtime.download.selection import select_model_files
from infernetes.runtime.download.source import HubSource
from infernetes.runtime.download.transfer import ChunkStream, Fetch

# huggingface_hub's shared client has no timeout of its own; a stalled connection must end in
# a (retried) NetworkError rather than hang the Job.
LISTING_TIMEOUT_SECONDS = 30.0


def plan_hub_download(source: HubSource, include: tuple[str, ...],
                      token: str | None) -> DownloadPlan:
    """The files to fetch, with sizes, at the commit `source.revision` resolves to now."""
    info = HfApi().model_info(source.repo_id, revision=source.revision, files_metadata=True,
                              token=token, timeout=LISTING_TIMEOUT_SECONDS)
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = select_model_files(siblings, include)
    if not names:
        raise DownloadError(DownloadFailure.NotFound,
                            f"{source.uri} has no files to fetch"
                            + (f" matching {list(include)}" if include else ""))
    commit = info.sha or source.revision
    files = []
    for name in names:
        sibling = siblings[name]
        size = sibling.size if sibling.size is not None else sibling.lfs and sibling.lfs.size
        if size is None:
            raise DownloadError(DownloadFailure.NetworkError,
                                f"the Hub listed {name} of {source.uri} without its size")
        version = sibling.lfs.sha256 if sibling.lfs else (sibling.blob_id or commit)
        files.append(PlannedFile(name, size, version))
    return DownloadPlan(source.uri, source.revision, info.sha, tuple(files))


def hub_fetch(source: HubSource, commit: str | None, token: str | None) -> Fetch:
    """Opens a file of `source` at `commit` (immutable, so resumed bytes match) from an offset."""

    @contextlib.contextmanager
    def fetch(file: PlannedFile, offset: int) -> Iterator[ChunkStream]:
        url = hf_hub_url(source.repo_id, file.path, revision=commit or source.revision)
        # Byte offsets must be the file's: no content coding.
        headers = {**build_hf_headers(token=token), "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with get_session().stream("GET", url, headers=headers, follow_redirects=True,
                                  timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            hf_raise_for_status(response)
            start = offset if response.status_code == 206 else 0
            # Chunks as they arrive: a chunk size would hold up to that much in memory, lost
            # (not resumable) when the connection drops.
            yield start, response.iter_bytes()

    return fetch
