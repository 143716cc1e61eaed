"""Fixtures: Prometheus' binaries (PATH, else Debian's package unpacked into the cache), and
one live stack for the module of live tests, torn down after it."""
from __future__ import annotations

import pytest

from observed_stack import start_stack, stop_stack
from prometheus_binaries import find_or_fetch


@pytest.fixture(scope="session")
def prometheus_binaries():
    return find_or_fetch()


@pytest.fixture(scope="module")
def observed(prometheus_binaries, tmp_path_factory):
    stack = start_stack(prometheus_binaries.prometheus, tmp_path_factory.mktemp("observed"))
    yield stack
    stop_stack(stack)
