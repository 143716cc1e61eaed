"""Why a download failed, as a reason the operator acts on, and the process exit code for each.

The operator's Job `podFailurePolicy` fails the Job at once on the exit codes of permanent
reasons (everything but NetworkError); NetworkError is retried inside the process first, then by
the Job's backoffLimit. Exit code 1 (an uncaught exception) is a bug, not a reason.
"""
from __future__ import annotations

import errno
import importlib
from enum import Enum


class DownloadFailure(str, Enum):
    # Member names are the reasons themselves, spelled as Kubernetes spells reasons.
    AuthFailed = "AuthFailed"        # no, a wrong, or an insufficient token (gated repo)
    NotFound = "NotFound"            # repository, revision, file or source path does not exist
    DiskFull = "DiskFull"            # DEST has too little free space (checked before, or ENOSPC)
    NetworkError = "NetworkError"    # connection refused/reset, timeout, HTTP 5xx/408/429
    InvalidSource = "InvalidSource"  # the SOURCE URI does not parse


EXIT_CODES: dict[DownloadFailure, int] = {
    DownloadFailure.InvalidSource: 2,  # the same code as any other command-line error
    DownloadFailure.AuthFailed: 10,
    DownloadFailure.NotFound: 11,
    DownloadFailure.DiskFull: 12,
    DownloadFailure.NetworkError: 13,
}


class DownloadError(Exception):
    def __init__(self, reason: DownloadFailure, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP clients' transport errors (connect, read, timeout, protocol): huggingface_hub 2.x
    uses `httpx2`, older releases `httpx`; whichever is installed counts."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            pass
    return tuple(errors)


def classify(error: BaseException) -> DownloadError | None:
    """The typed failure for an exception raised while downloading; None when it is none of
    ours (a bug, which should surface as such)."""
    from huggingface_hub import errors as hf

    if isinstance(error, DownloadError):
        return error
    if isinstance(error, hf.GatedRepoError):
        return DownloadError(DownloadFailure.AuthFailed, _summary(error))
    if isinstance(error, hf.RepositoryNotFoundError):
        # The Hub answers a missing repository and a private one without access alike (401
        # RepoNotFound). We report NotFound: the more common cause; the message says both. A
        # rejected token is a distinct answer ("Invalid credentials") and lands in AuthFailed.
        return DownloadError(DownloadFailure.NotFound,
                             f"{_summary(error)} If it exists, it is private or gated and the "
                             f"token has no access to it.")
    if isinstance(error, (hf.RevisionNotFoundError, hf.EntryNotFoundError)):
        return DownloadError(DownloadFailure.NotFound, _summary(error))
    if isinstance(error, hf.HfHubHTTPError):
        return DownloadError(_reason_for_status(error.response.status_code), _summary(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(DownloadFailure.DiskFull, f"no space left: {error}")
    if isinstance(error, _transport_errors()):
        return DownloadError(DownloadFailure.NetworkError,
                             f"{type(error).__name__}: {error or 'connection failed'}")
    return None


def _reason_for_status(status_code: int) -> DownloadFailure:
    if status_code in (401, 403):
        return DownloadFailure.AuthFailed
    if status_code in (404, 410):
        return DownloadFailure.NotFound
    # 5xx, 408, 429, and anything unexpected: worth another try.
    return DownloadFailure.NetworkError


def _summary(error: BaseException) -> str:
    """huggingface_hub's messages span lines (status, URL, advice, request id): keep the first
    two, less generic advice, and the server's own message."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("For more information")]
    text = " ".join(lines[:2]) if lines else type(error).__name__
    server_message = getattr(error, "server_message", None)
    if server_message and server_message not in text:
        text += f" (server: {server_message})"
    return text
