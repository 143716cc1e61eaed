"""Retrying a download after a NetworkError, with exponential backoff. Other failures are
permanent and raised at once."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from infernetes.runtime.download.failures import DownloadError, DownloadFailure

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_DELAY_SECONDS = 300.0


def backoff_delay(base_delay_seconds: float, retry_index: int) -> float:
    """Seconds to wait before retry `retry_index` (0-based): base, 2 x base, 4 x base, ..."""
    return min(base_delay_seconds * 2 ** retry_index, MAX_DELAY_SECONDS)


def with_network_retries(attempt: Callable[[], T], *, retries: int, base_delay_seconds: float,
                         sleep: Callable[[float], None]) -> T:
    """`attempt()`, run up to `retries` more times while it fails with NetworkError."""
    retries = max(retries, 0)
    for retry_index in range(retries + 1):
        try:
            return attempt()
        except DownloadError as e:
            if e.reason is not DownloadFailure.NetworkError or retry_index == retries:
                raise
            delay = backoff_delay(base_delay_seconds, retry_index)
            logger.warning("%s; retry %d of %d in %.1f s", e.message, retry_index + 1, retries,
                           delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
