"""Progress as JSON lines on stdout, one every `interval_seconds` at most, plus a final one.

The operator reads the last `{"event": ...}` line of the download pod's log into
`status.download`, so every line is a complete JSON object and logs go to stderr, never here.
A heartbeat thread keeps lines coming while a transfer stalls (the rate falls, the ETA grows).
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from typing import Callable, Iterator

from infernetes.runtime.download.progress import Clock, ProgressTracker


def print_event(event: dict) -> None:
    print(json.dumps(event), file=sys.stdout, flush=True)


class JsonProgressReporter:
    """A ProgressSink that prints `{"event": "progress", ...}` lines."""

    def __init__(self, interval_seconds: float, *, emit: Callable[[dict], None] = print_event,
                 clock: Clock = time.monotonic):
        self.interval_seconds = interval_seconds
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._tracker: ProgressTracker | None = None
        self._last_emitted_at = float("-inf")

    def start(self, total_bytes: int, present_bytes: int) -> None:
        with self._lock:
            self._tracker = ProgressTracker(total_bytes, initial_bytes=present_bytes,
                                            clock=self._clock)
            self._emit_locked(self._tracker)

    def advance(self, num_bytes: int) -> None:
        with self._lock:
            if self._tracker is not None:
                self._tracker.advance(num_bytes)
                self._emit_if_due_locked()

    def emit_if_due(self) -> None:
        with self._lock:
            self._emit_if_due_locked()

    def average_bytes_per_second(self) -> float:
        with self._lock:
            return 0.0 if self._tracker is None else self._tracker.average_bytes_per_second()

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """While inside, a daemon thread prints a line every interval even when no bytes move."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(self.interval_seconds, 0.05)):
                self.emit_if_due()

        thread = threading.Thread(target=beat, name="download-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _emit_if_due_locked(self) -> None:
        tracker = self._tracker
        if tracker is not None and self._clock() - self._last_emitted_at >= self.interval_seconds:
            self._emit_locked(tracker)

    def _emit_locked(self, tracker: ProgressTracker) -> None:
        self._emit(tracker.snapshot().to_event())
        self._last_emitted_at = self._clock()
