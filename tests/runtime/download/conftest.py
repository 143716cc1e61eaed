"""Fixtures: a fake Hub that huggingface_hub talks to, and the download CLI run in-process."""
from __future__ import annotations

import json
import socket

import pytest
from .fake_hub import FakeHub

from infernetes.runtime.cli import main


def point_huggingface_hub_at(monkeypatch, endpoint: str, tmp_path) -> None:
    """huggingface_hub reads HF_ENDPOINT once, at import, into `constants.ENDPOINT` (HfApi's
    default) and `constants.HUGGINGFACE_CO_URL_TEMPLATE` (hf_hub_url's): set all three. No
    token from the environment or a stored login reaches the fake unless a test puts one."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    hub = FakeHub()
    point_huggingface_hub_at(monkeypatch, hub.url, tmp_path)
    yield hub
    hub.close()


@pytest.fixture
def closed_endpoint(monkeypatch, tmp_path) -> str:
    """An endpoint where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    point_huggingface_hub_at(monkeypatch, endpoint, tmp_path)
    return endpoint


@pytest.fixture
def run_cli(capsys, tmp_path):
    """Runs `infernetes download ARGS...` in-process; returns (exit code, JSON events on
    stdout, stderr). Every stdout line must be a JSON object: the operator parses them."""

    def run(*args: str) -> tuple[int, list[dict], str]:
        code = main(["download", *args, "--progress-interval", "0", "--retry-delay", "0"])
        out, err = capsys.readouterr()
        events = [json.loads(line) for line in out.splitlines()]
        return code, events, err

    return run
