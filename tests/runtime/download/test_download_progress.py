"""ProgressTracker and the JSON-line reporter, on a fake clock."""
from __future__ import annotations

import pytest

from infernetes.runtime.download.progress import ProgressTracker
from infernetes.runtime.download.progress_report import JsonProgressReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_over_the_window():
    clock = FakeClock()
    tracker = ProgressTracker(1000, clock=clock, window_seconds=10)
    clock.now += 2
    tracker.advance(200)
    snapshot = tracker.snapshot()
    assert snapshot.bytes_done == 200
    assert snapshot.bytes_per_second == pytest.approx(100)
    assert snapshot.eta_seconds == pytest.approx(8)


def test_rate_forgets_what_is_older_than_the_window():
    clock = FakeClock()
    tracker = ProgressTracker(10_000, clock=clock, window_seconds=10)
    clock.now += 1
    tracker.advance(5000)  # a fast start...
    for _ in range(20):    # ...then 10 B/s for 20 s
        clock.now += 1
        tracker.advance(10)
    assert tracker.snapshot().bytes_per_second == pytest.approx(10)
    assert tracker.snapshot().eta_seconds == pytest.approx((10_000 - 5200) / 10)


def test_a_stall_drops_the_rate_to_zero_and_the_eta_to_unknown():
    clock = FakeClock()
    tracker = ProgressTracker(1000, clock=clock, window_seconds=10)
    clock.now += 1
    tracker.advance(100)
    clock.now += 4
    assert tracker.snapshot().bytes_per_second == pytest.approx(20)
    clock.now += 30  # nothing moved in the last window
    assert tracker.snapshot().bytes_per_second == 0
    assert tracker.snapshot().eta_seconds is None
    assert tracker.snapshot().bytes_done == 100


def test_unknown_total_has_a_rate_but_no_eta():
    clock = FakeClock()
    tracker = ProgressTracker(None, clock=clock)
    clock.now += 4
    tracker.advance(400)
    event = tracker.snapshot().to_event()
    assert event == {"event": "progress", "bytes": 400, "totalBytes": None,
                     "bytesPerSecond": 100.0, "etaSeconds": None}


def test_bytes_present_at_start_count_as_done_but_not_in_the_rate():
    clock = FakeClock()
    tracker = ProgressTracker(1000, initial_bytes=600, clock=clock)
    clock.now += 2
    tracker.advance(100)
    snapshot = tracker.snapshot()
    assert snapshot.bytes_done == 700
    assert snapshot.bytes_per_second == pytest.approx(50)
    assert tracker.average_bytes_per_second() == pytest.approx(50)
    assert snapshot.eta_seconds == pytest.approx(6)


def test_reporter_prints_at_most_once_per_interval():
    clock = FakeClock()
    events = []
    reporter = JsonProgressReporter(5, emit=events.append, clock=clock)
    reporter.start(total_bytes=100, present_bytes=0)  # the first line says the total
    for _ in range(4):
        clock.now += 1
        reporter.advance(10)
    assert [e["bytes"] for e in events] == [0]
    clock.now += 1
    reporter.advance(10)
    assert [e["bytes"] for e in events] == [0, 50]
    clock.now += 5
    reporter.emit_if_due()  # what the heartbeat calls while no bytes move
    assert [e["bytes"] for e in events] == [0, 50, 50]
    assert set(events[-1]) == {"event", "bytes", "totalBytes", "bytesPerSecond", "etaSeconds"}
