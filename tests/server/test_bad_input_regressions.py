"""Inputs that once produced a 500 or killed the engine loop (found by test_fuzz.py): each now
gets an OpenAI-shaped 4xx, and the server keeps serving."""
from __future__ import annotations

import json

import httpx
import pytest

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "\ud800", "max_tokens": 1}),
    ("/tokenize", {"prompt": "\ud800"}),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "\ud800"}],
                              "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": None}]}], "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 1,
                              "chat_template_kwargs": {"messages": None}}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "seed": 2**64}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "seed": 2**63 - 1, "n": 2}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "temperature": 1,
                         "top_k": 2**63}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "min_tokens": 1,
                         "stop_token_ids": [1000000]}),
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "stream": True,
                         "stop_token_ids": [2**64]}),
    # Checked before the stream's headers go out, not in the middle of the stream.
    ("/v1/completions", {"prompt": "Hello", "max_tokens": 2, "stream": True,
                         "stop_token_ids": [1000000]}),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 2, "stream": True,
                              "stop_token_ids": [1000000]}),
])
def test_rejected_with_400_and_the_engine_survives(server, path, body):
    # json.dumps escapes lone surrogates as \ud800, as a JavaScript client would send them.
    response = httpx.post(f"{server.url}{path}", content=json.dumps(body),
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400
    assert server.ctx.engine.is_healthy()


def test_chat_echo_with_content_parts(server):
    body = {"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}],
            "max_tokens": 2, "echo": True, "temperature": 0}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("a")


@pytest.mark.parametrize("method,path,content,status", [
    ("POST", "/v1/completions", b"\x80", 400),
    ("POST", "/v1/completions", b"[" * 2000 + b"]" * 2000, 400),
    ("GET", "/v1/nowhere", b"", 404),
    ("GET", "/v1/completions", b"", 405),
])
def test_transport_level_errors_have_openai_shape(server, method, path, content, status):
    response = httpx.request(method, f"{server.url}{path}", content=content,
                             headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == status
