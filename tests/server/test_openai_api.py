"""The real `openai` client against the server: the API's shapes, and outputs equal to the
offline engine's greedy outputs."""
from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from infernetes import SamplingParams

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server.ctx.served_model_name]
    assert models[0].model_extra["max_model_len"] == 2048


def test_chat_matches_offline_greedy(client, smollm2):
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION,
                                           temperature=0, max_tokens=24)
    offline = smollm2.chat(QUESTION, SamplingParams(temperature=0, max_tokens=24))[0]
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == offline.outputs[0].text
    assert choice.finish_reason == offline.outputs[0].finish_reason
    assert reply.usage.prompt_tokens == len(offline.prompt_token_ids)
    assert reply.usage.completion_tokens == len(offline.outputs[0].token_ids)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.system_fingerprint


def test_chat_streaming_equals_non_streaming(client):
    kwargs = dict(model="SmolLM2-135M-Instruct", messages=QUESTION, temperature=0,
                  max_tokens=20)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices


def test_completions_streaming_n_and_echo(client):
    kwargs = dict(model="SmolLM2-135M-Instruct", prompt="The sky is", max_tokens=8,
                  temperature=0)
    whole = client.completions.create(**kwargs)
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kwargs,
                                                                             stream=True))
    assert streamed == whole.choices[0].text
    echoed = client.completions.create(**kwargs, echo=True).choices[0].text
    assert echoed == "The sky is" + whole.choices[0].text
    many = client.completions.create(model="SmolLM2-135M-Instruct",
                                     prompt=["One", "Two"], n=2, max_tokens=5,
                                     temperature=1.0, seed=3)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    assert 4 <= many.usage.completion_tokens <= 4 * 5


def test_logprobs_in_each_api_format(client):
    chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION,
                                          max_tokens=5, temperature=0, logprobs=True,
                                          top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert content[0].top_logprobs[0].token == content[0].token  # greedy: the best one
    completion = client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hello",
                                           max_tokens=4, temperature=0, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 4
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert all(len(top) >= 2 for top in logprobs.top_logprobs)


def test_completions_echo_with_logprobs_scores_the_prompt(client, smollm2):
    kwargs = dict(model="SmolLM2-135M-Instruct", prompt="The capital of France is",
                  max_tokens=4, temperature=0, logprobs=2, echo=True)
    completion = client.completions.create(**kwargs)
    offline = smollm2.generate("The capital of France is",
                               SamplingParams(temperature=0, max_tokens=4, logprobs=2,
                                              prompt_logprobs=2))[0]
    num_prompt = len(offline.prompt_token_ids)
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == num_prompt + completion.usage.completion_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = [p[t].logprob for t, p in zip(offline.prompt_token_ids[1:],
                                             offline.prompt_logprobs[1:])]
    assert logprobs.token_logprobs[1:num_prompt] == pytest.approx(expected, abs=1e-3)
    assert "".join(logprobs.tokens) == choice.text
    assert choice.text.startswith("The capital of France is")
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    streamed = list(client.completions.create(**kwargs, stream=True))
    first = streamed[0].choices[0].logprobs
    assert first.tokens[:num_prompt] == logprobs.tokens[:num_prompt]
    assert sum(len(c.choices[0].logprobs.tokens) for c in streamed
               if c.choices[0].logprobs) == len(logprobs.tokens)
    assert "".join(c.choices[0].text for c in streamed) == choice.text


def test_vllm_prompt_logprobs_field(client):
    chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=QUESTION,
                                          max_tokens=2, temperature=0,
                                          extra_body={"prompt_logprobs": 1})
    scored = chat.model_extra["prompt_logprobs"]
    assert len(scored) == chat.usage.prompt_tokens and scored[0] is None
    assert all(1 <= len(position) <= 2 for position in scored[1:])
    assert all(v["logprob"] <= 0 and v["rank"] >= 1 for position in scored[1:]
               for v in position.values())
    completion = client.completions.create(model="SmolLM2-135M-Instruct", prompt="Hi there",
                                           max_tokens=2, extra_body={"prompt_logprobs": 0})
    assert len(completion.choices[0].model_extra["prompt_logprobs"]) == \
        completion.usage.prompt_tokens


def test_stop_strings(client):
    base = client.completions.create(model="SmolLM2-135M-Instruct", prompt="1, 2, 3, 4,",
                                     max_tokens=12, temperature=0).choices[0].text
    assert " 6" in base
    cut = client.completions.create(model="SmolLM2-135M-Instruct", prompt="1, 2, 3, 4,",
                                    max_tokens=12, temperature=0, stop=[" 6"]).choices[0]
    assert cut.text == base[:base.index(" 6")] and cut.finish_reason == "stop"


def test_concurrent_requests_equal_offline_greedy(client, smollm2):
    questions = [[{"role": "user", "content": f"Give me fact number {i} about cats."}]
                 for i in range(32)]
    params = SamplingParams(temperature=0, max_tokens=16)
    offline = [o.outputs[0].text for o in smollm2.chat(questions, params)]

    def ask(messages):
        return client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=messages, temperature=0,
            max_tokens=16).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        served = list(pool.map(ask, questions))
    assert served == offline


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "max_tokens": 5000}, 400, "prompt"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": [10**8]}, 400, None),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({}, 400, "prompt"),
])
def test_errors_have_openai_shape(server, body, status, param):
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["message"] and error["param"] == param


def test_tokenize_detokenize_health_version(server, smollm2):
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["tokens"] == smollm2.get_tokenizer().encode("Hello world")
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 2048
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": QUESTION}).json()
    assert chat["count"] > tokens["count"]
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert text["prompt"] == "Hello world"
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]
    assert httpx.get(f"{server.url}/openapi.json").status_code == 200


def test_continue_final_message_and_template_kwargs(client, smollm2):
    partial = QUESTION + [{"role": "assistant", "content": "The capital of France is"}]
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=partial, temperature=0, max_tokens=6,
        extra_body={"continue_final_message": True, "add_generation_prompt": False,
                    "echo": True, "chat_template_kwargs": {"unused_flag": True}})
    text = reply.choices[0].message.content
    assert text.startswith("The capital of France is") and "Paris" in text
    offline = smollm2.chat(partial, SamplingParams(temperature=0, max_tokens=6),
                           add_generation_prompt=False, continue_final_message=True)[0]
    assert text == "The capital of France is" + offline.outputs[0].text
