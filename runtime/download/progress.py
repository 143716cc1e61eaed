"""How far a download is: bytes done, rate over a recent window, time left. Pure: the clock is
injected, nothing is printed here (see progress_report.py)."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

Clock = Callable[[], float]


class ProgressSink(Protocol):
    """What a download tells about its progress. `start` may be called again on a retry."""

    def start(self, total_bytes: int, present_bytes: int) -> None: ...

    def advance(self, num_bytes: int) -> None: ...


class NoProgress:
    def start(self, total_bytes: int, present_bytes: int) -> None:
        pass

    def advance(self, num_bytes: int) -> None:
        pass


@dataclass(frozen=True)
class ProgressSnapshot:
    bytes_done: int
    total_bytes: int | None
    bytes_per_second: float
    eta_seconds: float | None  # None while the total or the rate is unknown

    def to_event(self, event: str = "progress") -> dict:
        """The JSON line the operator reads into `status.download` (field names are its API)."""
        return {"event": event, "bytes": self.bytes_done, "totalBytes": self.total_bytes,
                "bytesPerSecond": round(self.bytes_per_second, 1),
                "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1)}


class ProgressTracker:
    """Bytes done out of `total_bytes`; the rate counts only the last `window_seconds`, so a
    stalled transfer shows its rate falling towards 0 and its ETA growing.

    Invariant: `_samples` holds (time, bytes_done) in time order; its first entry is the newest
    one at or before the window's start (the baseline the rate is measured from)."""

    def __init__(self, total_bytes: int | None, *, initial_bytes: int = 0,
                 clock: Clock = time.monotonic, window_seconds: float = 10.0):
        self.total_bytes = total_bytes
        self.bytes_done = initial_bytes
        self.window_seconds = window_seconds
        self._clock = clock
        self._started_at = clock()
        self._initial_bytes = initial_bytes
        self._samples: deque[tuple[float, int]] = deque([(self._started_at, initial_bytes)])

    def advance(self, num_bytes: int) -> None:
        """Count `num_bytes` more (negative when a restarted file discards what it had)."""
        self.bytes_done += num_bytes
        now = self._clock()
        self._samples.append((now, self.bytes_done))
        self._drop_samples_before(now - self.window_seconds)

    def bytes_per_second(self) -> float:
        now = self._clock()
        self._drop_samples_before(now - self.window_seconds)
        since, bytes_then = self._samples[0]
        return max(self.bytes_done - bytes_then, 0) / (now - since) if now > since else 0.0

    def average_bytes_per_second(self) -> float:
        """Over the whole transfer: bytes that were present at the start do not count."""
        elapsed = self._clock() - self._started_at
        return (self.bytes_done - self._initial_bytes) / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self, bytes_per_second: float) -> float | None:
        if self.total_bytes is None:
            return None
        remaining = max(self.total_bytes - self.bytes_done, 0)
        if remaining == 0:
            return 0.0
        return remaining / bytes_per_second if bytes_per_second > 0 else None

    def snapshot(self) -> ProgressSnapshot:
        rate = self.bytes_per_second()
        return ProgressSnapshot(self.bytes_done, self.total_bytes, rate, self.eta_seconds(rate))

    def _drop_samples_before(self, cutoff: float) -> None:
        while len(self._samples) > 1 and self._samples[1][0] <= cutoff:
            self._samples.popleft()
