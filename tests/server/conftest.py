"""Fixtures: one live server for the session, and an OpenAI client for it."""
from __future__ import annotations

import pytest

from live_server import start_server


@pytest.fixture(scope="session")
def server():
    live = start_server()
    yield live
    live.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
