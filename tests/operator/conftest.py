"""Fixtures of the operator's tests; the helpers are in k8s_harness.py."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from k8s_harness import Cluster


@pytest.fixture
def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A running emulator; $KUBECONFIG points at it for the test's duration. Fails the test
    at teardown if the emulator answered anything with a 5xx."""
    cluster = Cluster(tmp_path)
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig_path)
    try:
        yield cluster
        errors = cluster.server_errors
    finally:
        cluster.close()
    assert not errors, f"the emulator failed requests: {errors!r}"
