"""POST /v1/completions."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi.responses import JSONResponse, StreamingResponse

from infernetes.runtime.outputs import CompletionOutput, LogprobsAtPosition, RequestOutput
from infernetes.runtime.server.context import ServingContext
from infernetes.runtime.server.errors import OpenAIError
from infernetes.runtime.server.prompt_logprobs import prompt_logprobs_json
from infernetes.runtime.server.protocol import CompletionRequest, random_id
from infernetes.runtime.server.streaming import SSE_DONE, merge, sse


def _prompts(request: CompletionRequest) -> list[str | list[int]]:
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    if not prompt:
        raise OpenAIError(400, "prompt must not be empty", "prompt")
    return list(prompt)


def _logprobs(completion: CompletionOutput, offset: int,
              echoed: dict[str, list] | None = None) -> dict | None:
    """OpenAI's completions logprobs; `echoed` (from `_echoed_logprobs`) goes first."""
    if completion.logprobs is None:
        return None
    lists = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    if echoed is not None:
        lists = {key: list(values) for key, values in echoed.items()}
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        offset = _append_position(lists, token_id, position, offset)
    return lists


def _echoed_logprobs(output: RequestOutput, first_token: str | None) -> dict[str, list]:
    """The echoed prompt's part of the logprobs: its first token has no logprob."""
    lists = {"tokens": [first_token], "token_logprobs": [None], "top_logprobs": [None],
             "text_offset": [0]}
    offset = len(first_token or "")
    for token_id, position in zip(output.prompt_token_ids[1:], output.prompt_logprobs[1:]):
        offset = _append_position(lists, token_id, position, offset)
    return lists


def _append_position(lists: dict[str, list], token_id: int, position: LogprobsAtPosition,
                     offset: int) -> int:
    """Adds one scored token; returns the text offset after it."""
    chosen = position[token_id]
    lists["tokens"].append(chosen.decoded_token)
    lists["token_logprobs"].append(chosen.logprob)
    lists["top_logprobs"].append({p.decoded_token: p.logprob for p in position.values()})
    lists["text_offset"].append(offset)
    return offset + len(chosen.decoded_token or "")


@dataclass(frozen=True, slots=True)
class _Echo:
    """What `echo` puts before a choice's text and, with logprobs, before its logprobs."""
    text: str
    logprobs: dict[str, list] | None

    @staticmethod
    def of(ctx: ServingContext, output: RequestOutput, prompt_text: str) -> _Echo:
        if output.prompt_logprobs is None:
            return _Echo(prompt_text, None)
        first = output.prompt_token_ids[0]
        first_token = ctx.tokenizer.decode([first], skip_special_tokens=False) \
            if ctx.tokenizer else None
        return _Echo(prompt_text, _echoed_logprobs(output, first_token))


_NO_ECHO = _Echo("", None)


async def create_completion(ctx: ServingContext, request: CompletionRequest):
    adapter = ctx.check_model(request.model)
    if request.suffix is not None:
        raise OpenAIError(400, "suffix is not supported", "suffix")
    engine = ctx.engine.engine
    prompts = _prompts(request)
    encoded = [engine.encode_prompt(p) for p in prompts]
    params_per_prompt = []
    for token_ids in encoded:
        max_tokens = ctx.check_length(len(token_ids), request.max_tokens)
        params = request.to_sampling_params(ctx.sampling_defaults)
        params.max_tokens = max_tokens
        params_per_prompt.append(params)
    ctx.admit(len(prompts))
    request_id = random_id("cmpl")
    created = int(time.time())
    # Each call checks its prompt and params at once: nothing starts unless all are valid.
    streams = [ctx.track(adapter, ctx.engine.generate(f"{request_id}-{i}", token_ids, params,
                                                      adapter))
               for i, (token_ids, params) in enumerate(zip(encoded, params_per_prompt))]
    texts = [p if isinstance(p, str) else ctx.tokenizer.decode(p) if ctx.tokenizer else ""
             for p in prompts] if request.echo else None
    if request.stream:
        return StreamingResponse(
            _stream(ctx, request, request_id, created, streams, encoded, texts),
            media_type="text/event-stream")
    finals: dict[int, RequestOutput] = {}
    async for index, output in merge(streams):
        finals[index] = output
    choices = []
    for index in range(len(prompts)):
        output = finals[index]
        for completion in output.outputs:
            echo = _Echo.of(ctx, output, texts[index]) if texts is not None else _NO_ECHO
            choices.append({
                "index": index * request.n + completion.index,
                "text": echo.text + completion.text,
                "logprobs": _logprobs(completion, len(echo.text), echo.logprobs),
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason,
                "prompt_logprobs": prompt_logprobs_json(output),
                **({"token_ids": completion.token_ids,
                    "prompt_token_ids": output.prompt_token_ids}
                   if request.return_token_ids else {})})
    prompt_tokens = sum(len(t) for t in encoded)
    completion_tokens = sum(len(c.token_ids) for o in finals.values() for c in o.outputs)
    return JSONResponse({
        "id": request_id, "object": "text_completion", "created": created,
        "model": request.model or ctx.served_model_name, "system_fingerprint": ctx.system_fingerprint,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})


async def _stream(ctx: ServingContext, request: CompletionRequest, request_id: str,
                  created: int, streams: list[AsyncIterator[RequestOutput]],
                  encoded: list[list[int]], texts: list[str] | None) -> AsyncIterator[str]:
    base = {"id": request_id, "object": "text_completion", "created": created,
            "model": request.model or ctx.served_model_name, "system_fingerprint": ctx.system_fingerprint}
    offsets: dict[int, int] = {}
    started: set[int] = set()
    completion_tokens = 0
    async for index, output in merge(streams):
        for completion in output.outputs:
            choice = index * request.n + completion.index
            first = choice not in started
            started.add(choice)
            echo = (_Echo.of(ctx, output, texts[index]) if texts is not None and first
                    else _NO_ECHO)
            text = echo.text + completion.text
            completion_tokens += len(completion.token_ids)
            if not text and not completion.token_ids and completion.finish_reason is None:
                continue
            offset = offsets.get(choice, 0) + len(echo.text)
            logprobs = _logprobs(completion, offset, echo.logprobs)
            offsets[choice] = offset + len(completion.text)
            chunk = {"index": choice, "text": text, "logprobs": logprobs,
                     "finish_reason": completion.finish_reason,
                     "stop_reason": completion.stop_reason}
            if first and output.prompt_logprobs is not None:
                chunk["prompt_logprobs"] = prompt_logprobs_json(output)
            yield sse({**base, "choices": [chunk]})
    if request.stream_options and request.stream_options.include_usage:
        prompt_tokens = sum(len(t) for t in encoded)
        yield sse({**base, "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}})
    yield SSE_DONE
