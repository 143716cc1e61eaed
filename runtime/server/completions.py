"""POST /v1/completions."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from infernetes.runtime.outputs import CompletionOutput, RequestOutput
from infernetes.runtime.server.context import ServingContext
from infernetes.runtime.server.errors import OpenAIError
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


def _logprobs(completion: CompletionOutput, offset: int) -> dict | None:
    if completion.logprobs is None:
        return None
    tokens, token_logprobs, top, text_offset = [], [], [], []
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        chosen = position[token_id]
        tokens.append(chosen.decoded_token)
        token_logprobs.append(chosen.logprob)
        top.append({p.decoded_token: p.logprob for p in position.values()})
        text_offset.append(offset)
        offset += len(chosen.decoded_token or "")
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
            "text_offset": text_offset}


async def create_completion(ctx: ServingContext, request: CompletionRequest):
    ctx.check_model(request.model)
    if request.suffix is not None:
        raise OpenAIError(400, "suffix is not supported", "suffix")
    if request.echo and request.logprobs is not None:
        raise OpenAIError(400, "echo together with logprobs is not supported", "echo")
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
    streams = [ctx.engine.generate(f"{request_id}-{i}", token_ids, params)
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
            text = completion.text if texts is None else texts[index] + completion.text
            choices.append({
                "index": index * request.n + completion.index, "text": text,
                "logprobs": _logprobs(completion, 0),
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason})
    prompt_tokens = sum(len(t) for t in encoded)
    completion_tokens = sum(len(c.token_ids) for o in finals.values() for c in o.outputs)
    return JSONResponse({
        "id": request_id, "object": "text_completion", "created": created,
        "model": ctx.served_model_name, "system_fingerprint": ctx.system_fingerprint,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})


async def _stream(ctx: ServingContext, request: CompletionRequest, request_id: str,
                  created: int, streams: list[AsyncIterator[RequestOutput]],
                  encoded: list[list[int]], texts: list[str] | None) -> AsyncIterator[str]:
    base = {"id": request_id, "object": "text_completion", "created": created,
            "model": ctx.served_model_name, "system_fingerprint": ctx.system_fingerprint}
    offsets: dict[int, int] = {}
    echoed: set[int] = set()
    completion_tokens = 0
    async for index, output in merge(streams):
        for completion in output.outputs:
            choice = index * request.n + completion.index
            text = completion.text
            if texts is not None and choice not in echoed:
                echoed.add(choice)
                text = texts[index] + text
            completion_tokens += len(completion.token_ids)
            if not text and not completion.token_ids and completion.finish_reason is None:
                continue
            logprobs = _logprobs(completion, offsets.get(choice, 0))
            offsets[choice] = offsets.get(choice, 0) + len(completion.text)
            yield sse({**base, "choices": [{
                "index": choice, "text": text, "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason}]})
    if request.stream_options and request.stream_options.include_usage:
        prompt_tokens = sum(len(t) for t in encoded)
        yield sse({**base, "choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}})
    yield SSE_DONE
