"""`--reasoning-parser` through the server, with the real `openai` client.

SmolLM2 never writes think tags, so tags are tested with a scripted engine (the server's own
app and uvicorn, an engine whose every request "generates" fixed pieces with the tags cut in
awkward places); SmolLM2 itself checks the untagged path against the offline engine."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from infernetes import SamplingParams
from infernetes.runtime.outputs import CompletionOutput, RequestOutput
from infernetes.runtime.sampling_params import RequestOutputKind
from infernetes.runtime.server.app import build_app
from infernetes.runtime.server.context import ServingContext
from infernetes.runtime.server.reasoning import get_reasoning_parser
from live_server import LiveServer, start_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# What a DeepSeek-R1 distill writes after its template's "<think>\n", cut as tokens might be.
PIECES = ["France's capital", " is Paris.\n</", "think", ">\n\n", "**Paris", "**."]
REASONING = "France's capital is Paris.\n"
CONTENT = "\n\n**Paris**."


class _Tokenizer:
    def apply_chat_template(self, conversation, **_) -> str:
        return "".join(m.get("content") or "" for m in conversation)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) % 100 for c in text]


class ScriptedEngine:
    """AsyncLLM's interface as the chat endpoint uses it; each choice generates PIECES."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces
        tokenizer = _Tokenizer()
        self.engine = SimpleNamespace(tokenizer=tokenizer, max_model_len=4096,
                                      default_sampling={}, model_folder="scripted",
                                      encode_prompt=tokenizer.encode)

    def generate(self, request_id: str, prompt: list[int], params: SamplingParams,
                 lora_request=None):
        return self._outputs(request_id, prompt, params)

    async def _outputs(self, request_id, prompt, params):
        pieces = self.pieces if params.output_kind is RequestOutputKind.DELTA \
            else ["".join(self.pieces)]
        for step, piece in enumerate(pieces):
            last = step == len(pieces) - 1
            yield RequestOutput(request_id, None, prompt, [
                CompletionOutput(index, piece, [step], None, None, "stop" if last else None)
                for index in range(params.n)], finished=last)

    def num_waiting(self) -> int:
        return 0

    def is_healthy(self) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def _client(url: str):
    from openai import OpenAI
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _streamed(client, **kwargs) -> tuple[str, str, list]:
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    return reasoning, "".join(d.content or "" for d in deltas), deltas


@pytest.fixture(scope="module")
def scripted():
    """parser name -> a live server over the scripted engine."""
    servers = {}
    for name in ("deepseek_r1", "qwen3", None):
        ctx = ServingContext(ScriptedEngine(PIECES), "scripted",
                             reasoning_parser=get_reasoning_parser(name))
        servers[name] = LiveServer(ctx, build_app(ctx))
    yield servers
    for server in servers.values():
        server.stop()


def test_deepseek_r1_splits_reasoning_from_content(scripted) -> None:
    client = _client(scripted["deepseek_r1"].url)
    reply = client.chat.completions.create(model="scripted", messages=QUESTION, n=2)
    for choice in reply.choices:
        assert choice.message.reasoning_content == REASONING
        assert choice.message.content == CONTENT
    reasoning, content, deltas = _streamed(client, model="scripted", messages=QUESTION)
    assert (reasoning, content) == (REASONING, CONTENT)
    assert not any("think>" in (getattr(d, "reasoning_content", None) or "") + (d.content or "")
                   for d in deltas)


def test_qwen3_without_an_opening_tag_is_all_content(scripted) -> None:
    client = _client(scripted["qwen3"].url)
    message = client.chat.completions.create(model="scripted", messages=QUESTION
                                             ).choices[0].message
    assert message.reasoning_content is None
    assert message.content == "".join(PIECES)
    assert _streamed(client, model="scripted", messages=QUESTION)[:2] == ("", "".join(PIECES))


def test_without_a_parser_tags_stay_in_content(scripted) -> None:
    client = _client(scripted[None].url)
    message = client.chat.completions.create(model="scripted", messages=QUESTION
                                             ).choices[0].message
    assert message.content == "".join(PIECES)
    assert "reasoning_content" not in (message.model_extra or {})


def test_completions_endpoint_ignores_the_parser(scripted) -> None:
    import httpx
    body = {"model": "scripted", "prompt": "Hi"}
    reply = httpx.post(f"{scripted['deepseek_r1'].url}/v1/completions", json=body, timeout=30)
    assert reply.json()["choices"][0]["text"] == "".join(PIECES)


@pytest.fixture(scope="module", params=["deepseek_r1", "qwen3"])
def smollm2_server(request):
    live = start_server(reasoning_parser=request.param)
    yield request.param, live
    live.stop()


def test_smollm2_greedy_output_lands_in_the_parsers_field(smollm2_server, smollm2) -> None:
    """No tags: deepseek_r1 takes it all as reasoning (a thought cut short), qwen3 as content;
    either way it is the offline greedy text, streamed or not."""
    name, server = smollm2_server
    client = _client(server.url)
    kwargs = dict(model="SmolLM2-135M-Instruct", messages=QUESTION, temperature=0,
                  max_tokens=20)
    offline = smollm2.chat(QUESTION, SamplingParams(temperature=0, max_tokens=20))[0]
    text = offline.outputs[0].text
    message = client.chat.completions.create(**kwargs).choices[0].message
    reasoning, content, _ = _streamed(client, **kwargs)
    if name == "deepseek_r1":
        assert (message.reasoning_content, message.content) == (text, None)
        assert (reasoning, content) == (text, "")
    else:
        assert (message.reasoning_content, message.content) == (None, text)
        assert (reasoning, content) == ("", text)


def test_serve_refuses_an_unknown_parser_naming_the_flag_and_choices() -> None:
    result = subprocess.run([sys.executable, "-m", "infernetes.runtime.cli", "serve",
                             "--reasoning-parser", "nope"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--reasoning-parser" in result.stderr
    assert "deepseek_r1" in result.stderr and "qwen3" in result.stderr


def test_serve_accepts_vllms_reasoning_flags(monkeypatch) -> None:
    from infernetes.runtime import cli
    seen = {}
    monkeypatch.setattr(cli, "run_server", lambda args: seen.setdefault("args", args) and 0)
    assert cli.main(["serve", "--enable-reasoning", "--reasoning-parser", "deepseek_r1"]) == 0
    assert seen["args"].reasoning_parser == "deepseek_r1"
