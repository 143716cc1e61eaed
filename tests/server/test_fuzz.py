"""Property-based fuzzing of the HTTP API with hypothesis, against the live session server.

Every POST endpoint (completions, chat completions, tokenize, detokenize) gets mostly-valid
bodies whose fields take random, boundary and wrong-typed values (plus unknown fields), and
also arbitrary JSON values and non-JSON bytes as the whole body. Whatever comes in, the server
must:

- never answer with a 5xx, nor hang, nor drop the connection;
- answer every error with OpenAI's shape, {"error": {"message", "type", "param", "code"}},
  with `code` equal to the HTTP status (validation errors are 400, never FastAPI's 422);
- end every 200 event stream with `data: [DONE]`;
- keep its engine loop alive, and afterwards still serve a normal completion exactly as before,
  with no request left in the engine.

Generation is kept cheap: valid `max_tokens` is at most 8, valid `n` at most 2, prompts that
reach the model are short, and wrong values that pydantic would coerce into a large count
(e.g. "300" or 300.0 for max_tokens) are left out. Long strings go to fields that never reach
the model, or make prompts too long to be accepted at all.

A failing example is saved in .hypothesis/ and replayed first on the next run; the failure
message holds the exact bytes sent.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

TIMEOUT = 30.0  # seconds per request; a request that takes longer counts as a hang

FUZZ = settings(deadline=None, print_blob=True,
                # no explain phase: it re-runs failing examples for little insight here
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                # engine_alive_before is function-scoped on purpose: it runs once per test
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


class _Served:
    """Stands for the server's model name, which is only known once the server runs."""

    def __repr__(self) -> str:
        return "SERVED_MODEL"


SERVED = _Served()


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()  # a field left out of the body

# -- values -------------------------------------------------------------------------------

SPECIAL_TEXT = st.sampled_from([
    "", " ", "\x00", "\ud800", "a\udfffb", "\U0001f600", "\u202e\u0301", "\ufeff", "<|im_start|>",
    "<|im_end|>", "<|endoftext|>", "\r\n\t", "{{ x }}", "{% raw %}", "null", "data: [DONE]\n\n"])
SHORT_TEXT = st.one_of(st.text(max_size=16), SPECIAL_TEXT)
LONG_TEXT = st.builds(lambda piece, times: piece * times,  # up to a few KB
                      st.text(min_size=1, max_size=8), st.integers(100, 500))
ANY_TEXT = st.one_of(SHORT_TEXT, LONG_TEXT)
BIG_INTS = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**40, -1,
                            -(2**31), -(2**63), -(2**63) - 1, -(10**40)])
INTS = st.one_of(st.integers(-5, 50), BIG_INTS, st.integers())
FLOATS = st.one_of(st.floats(), st.sampled_from(
    [-2.0000001, -2.0, -1e-9, -0.0, 0.0, 1e-300, 1e-9, 1e-5, 0.5, 1.0, 1.0000001, 2.0, 2.0000001,
     1e308, -1e308]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, SHORT_TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(SHORT_TEXT, inner, max_size=3)), max_leaves=6)


def mostly(valid: st.SearchStrategy, odd: st.SearchStrategy = JUNK,
           one_in: int = 5) -> st.SearchStrategy:
    """`odd` about once in `one_in` draws, else `valid` (shrinks towards `valid`)."""
    return st.integers(1, one_in).flatmap(lambda i: odd if i == one_in else valid)


def sometimes_missing(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(0, 9).flatmap(lambda i: st.just(MISSING) if i == 9 else strategy)


def _cheap(value) -> bool:
    """False for a wrong value that pydantic would coerce into a valid, large count (so a slow
    request) and for null (no limit); every other value is fine for a count field."""
    if value is None:
        return False
    if isinstance(value, str):
        try:
            value = float(value.strip().replace("_", ""))
        except ValueError:
            return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return not 2 < value < 2049
    return True


# Counts that drive the amount of generation: n, max_tokens, max_completion_tokens.
COUNT_ODD = st.one_of(
    st.sampled_from([0, -1, 2049, 10**6, 2.5, 1e-3, 8.5, "", "four", "1e3", [], {}, [1],
                     {"value": 1}, float("nan"), float("inf")]),
    BIG_INTS, JUNK.filter(_cheap))
MAX_TOKENS = mostly(st.integers(1, 8), COUNT_ODD, one_in=8)
PROMPT_TEXT = st.one_of(st.text(min_size=1, max_size=16), SPECIAL_TEXT.filter(bool))
TOKEN_IDS = st.lists(st.integers(0, 1000), min_size=1, max_size=8)
# Too long for the 2048-token context, so rejected before any prefill.
OVERLONG_PROMPT = st.one_of(st.integers(2048, 2600).map(lambda k: "hello " * k),
                            st.integers(2048, 2600).map(lambda k: [0] * k))
STREAM = mostly(st.sampled_from([True, False, MISSING]), one_in=10)
FLOAT_ODD = st.one_of(FLOATS, JUNK)
INT_ODD = st.one_of(INTS, JUNK)

SAMPLING_FIELDS = {
    "model": mostly(st.sampled_from([SERVED, None]), st.one_of(ANY_TEXT, JUNK)),
    "n": mostly(st.integers(1, 2), COUNT_ODD),
    "temperature": mostly(st.one_of(st.none(), st.floats(0, 2)), FLOAT_ODD),
    "top_p": mostly(st.one_of(st.none(), st.floats(0, 1, exclude_min=True)), FLOAT_ODD),
    "stop": mostly(st.one_of(st.none(), ANY_TEXT, st.lists(ANY_TEXT, max_size=4))),
    "stream_options": mostly(st.one_of(st.none(), st.fixed_dictionaries(
        {}, optional={"include_usage": mostly(st.booleans())}))),
    "presence_penalty": mostly(st.floats(-2, 2), FLOAT_ODD),
    "frequency_penalty": mostly(st.floats(-2, 2), FLOAT_ODD),
    # Integers without bounds in the API take the widest values too.
    "seed": mostly(st.one_of(st.none(), st.integers(-(2**31), 2**32), BIG_INTS), INT_ODD),
    "user": mostly(ANY_TEXT),
    "top_k": mostly(st.one_of(st.none(), st.integers(-1, 100), BIG_INTS.filter(lambda k: k > 0)),
                    INT_ODD),
    "min_p": mostly(st.one_of(st.none(), st.floats(0, 1)), FLOAT_ODD),
    "repetition_penalty": mostly(st.one_of(st.none(), st.floats(0.5, 2)), FLOAT_ODD),
    "ignore_eos": mostly(st.booleans()),
    "min_tokens": mostly(st.integers(0, 2), INT_ODD),
    "stop_token_ids": mostly(st.one_of(st.none(), st.lists(st.one_of(
        st.integers(0, 1000), BIG_INTS.filter(lambda t: t > 0)), max_size=3)),
                             st.one_of(st.lists(INTS, max_size=3), JUNK)),
    "skip_special_tokens": mostly(st.booleans()),
    "include_stop_str_in_output": mostly(st.booleans()),
    "prompt_logprobs": mostly(st.one_of(st.none(), st.integers(0, 5)), INT_ODD),
}

COMPLETION_REQUIRED = {
    "prompt": sometimes_missing(mostly(
        st.one_of(PROMPT_TEXT, st.lists(PROMPT_TEXT, min_size=1, max_size=3), TOKEN_IDS,
                  st.lists(TOKEN_IDS, min_size=1, max_size=3)),
        st.one_of(OVERLONG_PROMPT, st.lists(INTS, max_size=4),
                  st.lists(st.lists(INTS, max_size=3), max_size=3), st.just([]), st.just([[]]),
                  JUNK))),
    "max_tokens": MAX_TOKENS,  # always sent: its default would let a request run long
    "stream": STREAM,
}
COMPLETION_OPTIONAL = {
    **SAMPLING_FIELDS,
    "logprobs": mostly(st.one_of(st.none(), st.integers(0, 5)), INT_ODD),
    "echo": mostly(st.booleans()),
    "suffix": mostly(st.none(), ANY_TEXT),
}

PART = mostly(
    st.fixed_dictionaries({"type": st.just("text"), "text": mostly(SHORT_TEXT, one_in=8)}),
    st.one_of(st.fixed_dictionaries({"type": st.one_of(SHORT_TEXT, st.sampled_from(
                                         ["image_url", "input_audio", "file"]))},
                                     optional={"image_url": JUNK, "text": SHORT_TEXT}),
              st.dictionaries(SHORT_TEXT, JUNK, max_size=2)),
    one_in=6)
MESSAGE = st.fixed_dictionaries(
    {"role": mostly(st.sampled_from(["system", "user", "assistant", "tool"]),
                    st.one_of(SHORT_TEXT, JUNK), one_in=10),
     "content": mostly(st.one_of(SHORT_TEXT, st.lists(PART, max_size=3)),
                       st.one_of(st.none(), JUNK), one_in=8)},
    optional={"name": mostly(SHORT_TEXT), "tool_calls": JUNK, "tool_call_id": SHORT_TEXT})
MESSAGES = mostly(st.lists(MESSAGE, min_size=1, max_size=3),
                  st.one_of(st.just([]), JUNK, st.lists(JUNK, min_size=1, max_size=2)),
                  one_in=8)
TEMPLATES = st.sampled_from([
    None, "", "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    "{{ messages | tojson }}", "{% for", "{{ 1/0 }}", "{{ raise_exception('no') }}",
    "{{ messages[7]['content'] }}", "{{ foo.bar.baz }}", "x", "{{ tools | length }}"])
RESERVED_KWARGS = st.sampled_from(["messages", "tools", "add_generation_prompt",
                                   "continue_final_message", "chat_template", "bos_token",
                                   "eos_token"])

CHAT_REQUIRED = {
    "messages": sometimes_missing(MESSAGES),
    "max_tokens": MAX_TOKENS,  # always sent: without it a chat request may run to the context
    "stream": STREAM,
}
CHAT_OPTIONAL = {
    **SAMPLING_FIELDS,
    "max_completion_tokens": MAX_TOKENS,
    "logprobs": mostly(st.booleans()),
    "top_logprobs": mostly(st.one_of(st.none(), st.integers(0, 5)), INT_ODD),
    "tools": mostly(st.one_of(st.none(), st.lists(st.dictionaries(SHORT_TEXT, JUNK, max_size=2),
                                                  max_size=2))),
    "response_format": mostly(st.sampled_from([None, {"type": "text"}, {"type": "json_object"},
                                               {"type": "json_schema", "json_schema": {}}])),
    "echo": mostly(st.booleans()),
    "add_generation_prompt": mostly(st.booleans()),
    "continue_final_message": mostly(st.booleans()),
    "chat_template": mostly(TEMPLATES, st.one_of(SHORT_TEXT, JUNK)),
    "chat_template_kwargs": mostly(
        st.one_of(st.none(), st.dictionaries(SHORT_TEXT, st.one_of(JUNK, LONG_TEXT), max_size=3)),
        st.one_of(st.dictionaries(RESERVED_KWARGS, JUNK, min_size=1, max_size=2), JUNK)),
}

TOKENIZE_OPTIONAL = {
    "model": SAMPLING_FIELDS["model"],
    "prompt": mostly(st.one_of(st.none(), ANY_TEXT)),
    "messages": mostly(st.none(), MESSAGES),
    "add_special_tokens": mostly(st.booleans()),
    "add_generation_prompt": mostly(st.booleans()),
}

DETOKENIZE_REQUIRED = {
    "tokens": sometimes_missing(mostly(
        st.lists(st.integers(0, 49151), max_size=16),  # the default model's vocabulary
        st.one_of(st.lists(st.one_of(INTS, FLOATS), max_size=4), JUNK))),
}
DETOKENIZE_OPTIONAL = {"model": SAMPLING_FIELDS["model"]}

KNOWN_FIELDS = set(COMPLETION_REQUIRED) | set(COMPLETION_OPTIONAL) | set(CHAT_REQUIRED) \
    | set(CHAT_OPTIONAL) | set(TOKENIZE_OPTIONAL) | set(DETOKENIZE_REQUIRED)
UNKNOWN_FIELDS = st.dictionaries(SHORT_TEXT.filter(lambda k: k not in KNOWN_FIELDS),
                                 st.one_of(JUNK, LONG_TEXT), max_size=2)


def bodies(required: dict, optional: dict, one_in: int = 5) -> st.SearchStrategy[dict]:
    """A body with every required field (each sometimes left out), each optional field about
    once in `one_in` bodies, and sometimes unknown fields; every value mostly valid. Shrinks
    towards fewer fields."""
    def sometimes(strategy):
        return st.integers(1, one_in).flatmap(
            lambda i: strategy if i == one_in else st.just(MISSING))

    def merge(parts) -> dict:
        unknown, fields = parts
        return {k: v for k, v in {**unknown, **fields}.items() if v is not MISSING}

    return st.tuples(
        mostly(st.just({}), UNKNOWN_FIELDS),
        st.fixed_dictionaries({**required, **{k: sometimes(v) for k, v in optional.items()}}),
    ).map(merge)


def encode(body, served: str) -> bytes:
    """JSON as a lenient client would send it: lone surrogates escaped, NaN and Infinity kept."""
    return json.dumps(body, default=lambda o: served if o is SERVED else repr(o)).encode()


VALID_JSON = b'{"prompt": "Hi", "max_tokens": 2, "stream": true}'
RAW_BODIES = st.one_of(
    JUNK.map(lambda value: json.dumps(value).encode()),   # any JSON value as the whole body
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda s: s.encode("utf-16")),
    st.lists(st.sampled_from([*"{}[]\":,", "\\u", "\\ud800", "1e999", "-", "NaN", "null"]),
             max_size=24).map(lambda chars: "".join(chars).encode()),
    SPECIAL_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(0, len(VALID_JSON)).map(lambda i: VALID_JSON[:i]),  # cut short
    st.integers(1, 3000).map(lambda depth: ("[" * depth + "]" * depth).encode()),
    st.integers(1, 3000).map(lambda depth: ('{"a":' * depth + "0" + "}" * depth).encode()),
)
CONTENT_TYPES = st.sampled_from(["application/json", "application/json", None, "text/plain",
                                 "application/json; charset=latin-1",
                                 "application/x-www-form-urlencoded", "multipart/form-data"])
POST_PATHS = ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"]

# -- sending and checking ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int | None  # None: no complete answer (see `failure`)
    content_type: str
    raw: bytes
    failure: str | None  # a timeout or a dropped connection
    engine_ok: bool  # whether the engine loop was alive right after the answer
    engine_error: str


# Every answer, by request. Once one request has brought the engine loop down, no other can be
# served: an example that already ran gets its recorded answer back, so that hypothesis sees the
# same failure when it replays the example; a new one has nothing to check. Without this, every
# later example would fail the same way and hypothesis would report the wrong inputs.
_outcomes: dict[tuple[str, bytes, str | None], Outcome] = {}
_killer: list[str] = []  # the first request after which the engine loop was down


def engine_down_message(server) -> str:
    engine = server.ctx.engine
    return f"the engine loop is down ({engine.error!r})" + (
        f"; it went down after {_killer[0]}" if _killer else "")


def settle(http: httpx.Client) -> None:
    """Let the server finish logging a crash before the test reports it. On CPython < 3.11.8,
    ast.parse in two threads at once (the server printing a traceback, pytest formatting the
    failure) can raise "SystemError: AST constructor recursion depth mismatch" (gh-106905)."""
    try:
        http.get("/health", headers={"connection": "close"})
    except httpx.HTTPError:
        pass
    time.sleep(0.1)


def post(server, http: httpx.Client, path: str, content: bytes,
         content_type: str | None) -> Outcome | None:
    key = (path, content, content_type)
    engine = server.ctx.engine
    if not engine.is_healthy():
        return _outcomes.get(key)
    # A fresh connection for each request, so that one answer cannot break the next request.
    headers = {"connection": "close"}
    if content_type is not None:
        headers["content-type"] = content_type
    status, type_out, raw, failure = None, "", b"", None
    try:
        with http.stream("POST", path, content=content, headers=headers) as response:
            raw = response.read()
        status, type_out = response.status_code, response.headers.get("content-type", "")
    except httpx.TimeoutException as e:
        failure = f"no complete answer within {TIMEOUT} s: {e!r}"
    except httpx.HTTPError as e:
        failure = f"the connection failed: {e!r}"
    if failure is not None or status >= 500:
        settle(http)
    outcome = Outcome(status, type_out, raw, failure, engine.is_healthy(), repr(engine.error))
    _outcomes[key] = outcome
    if not outcome.engine_ok and not _killer:
        _killer.append(describe(path, content, content_type))
    return outcome


def describe(path: str, content: bytes, content_type: str | None) -> str:
    return f"POST {path} (content-type {content_type}) with body {content[:3000]!r}"


def check_error_body(where: str, status: int, content_type: str, raw: bytes) -> None:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    ok = (content_type.startswith("application/json") and isinstance(body, dict)
          and set(body) == {"error"} and isinstance(error, dict)
          and {"message", "type", "param", "code"} <= set(error)
          and error["code"] == status
          and isinstance(error["message"], str) and error["message"] != ""
          and isinstance(error["type"], str)
          and (error["param"] is None or isinstance(error["param"], str)))
    assert ok, (f"{where} -> HTTP {status} ({content_type}) without an OpenAI error body: "
                f"{raw[:1000]!r}")


def check_stream(where: str, raw: bytes) -> None:
    text = raw.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), \
        f"{where} -> a stream without data: [DONE]: {text[-1000:]!r}"
    for item in [e for e in text.split("\n\n") if e][:-1]:
        assert item.startswith("data: "), f"{where} -> not an SSE data event: {item[:500]!r}"
        payload = json.loads(item.removeprefix("data: "))
        assert isinstance(payload, dict) and "error" not in payload, \
            f"{where} -> an error inside a 200 stream: {item[:1000]!r}"


def exchange(server, http: httpx.Client, path: str, content: bytes,
             content_type: str | None = "application/json") -> None:
    """POST, read the whole answer and check it."""
    outcome = post(server, http, path, content, content_type)
    if outcome is None:
        event("not sent: the engine loop is down")
        return
    where = describe(path, content, content_type)
    status, raw = outcome.status, outcome.raw
    assert outcome.engine_ok, (f"{where} brought the engine loop down: {outcome.engine_error}; "
                               f"the answer: {outcome.failure or status} {raw[:500]!r}")
    assert outcome.failure is None, f"{where}: {outcome.failure}"
    event(f"{path} -> HTTP {status}")
    assert status < 500, f"{where} -> HTTP {status}: {raw[:1000]!r}"
    assert status in (200, 400, 404), f"{where} -> unexpected HTTP {status}: {raw[:1000]!r}"
    if status != 200:
        check_error_body(where, status, outcome.content_type, raw)
    elif outcome.content_type.startswith("text/event-stream"):
        event(f"{path} -> 200 stream")
        check_stream(where, raw)
    else:
        assert outcome.content_type.startswith("application/json"), \
            f"{where} -> HTTP 200 with content-type {outcome.content_type}"
        assert isinstance(json.loads(raw), dict), f"{where} -> {raw[:1000]!r}"


# -- fixtures -------------------------------------------------------------------------------

NORMAL = {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture(scope="module")
def reference(http) -> dict:
    """A normal greedy completion, taken before any fuzzing."""
    response = http.post("/v1/completions", json=NORMAL)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(autouse=True)
def engine_alive_before(server):
    """A test that starts with the engine loop down fails at once, naming the culprit."""
    assert server.ctx.engine.is_healthy(), engine_down_message(server)


pytestmark = pytest.mark.usefixtures("reference")

# -- tests ----------------------------------------------------------------------------------


@settings(FUZZ, max_examples=35)
@given(body=bodies(COMPLETION_REQUIRED, COMPLETION_OPTIONAL))
def test_fuzz_completions(server, http, body):
    exchange(server, http, "/v1/completions", encode(body, server.ctx.served_model_name))


@settings(FUZZ, max_examples=35)
@given(body=bodies(CHAT_REQUIRED, CHAT_OPTIONAL))
def test_fuzz_chat_completions(server, http, body):
    exchange(server, http, "/v1/chat/completions", encode(body, server.ctx.served_model_name))


@settings(FUZZ, max_examples=15)
@given(body=bodies({}, TOKENIZE_OPTIONAL, one_in=2))
def test_fuzz_tokenize(server, http, body):
    exchange(server, http, "/tokenize", encode(body, server.ctx.served_model_name))


@settings(FUZZ, max_examples=10)
@given(body=bodies(DETOKENIZE_REQUIRED, DETOKENIZE_OPTIONAL, one_in=3))
def test_fuzz_detokenize(server, http, body):
    exchange(server, http, "/detokenize", encode(body, server.ctx.served_model_name))


@settings(FUZZ, max_examples=25)
@given(path=st.sampled_from(POST_PATHS), content=RAW_BODIES, content_type=CONTENT_TYPES)
def test_fuzz_raw_bodies(server, http, path, content, content_type):
    exchange(server, http, path, content, content_type)


def test_server_still_serves_after_fuzzing(server, http, reference):
    engine = server.ctx.engine
    assert engine.is_healthy(), engine_down_message(server)
    deadline = time.monotonic() + 10
    while engine.engine.has_unfinished_requests():
        assert time.monotonic() < deadline, "requests are still left in the engine after fuzzing"
        time.sleep(0.05)
    assert http.get("/health").status_code == 200
    response = http.post("/v1/completions", json=NORMAL)
    assert response.status_code == 200, response.text
    after = response.json()
    assert after["choices"][0]["text"] == reference["choices"][0]["text"]
    assert after["choices"][0]["finish_reason"] == reference["choices"][0]["finish_reason"]
    assert after["usage"] == reference["usage"]
    streamed = http.post("/v1/completions", json={**NORMAL, "stream": True})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    kv = engine.engine.kv_cache_manager
    assert kv.num_free_blocks == engine.engine.num_blocks, "KV blocks leaked during fuzzing"
    assert http.get("/health").status_code == 200
