"""POST /v1/chat/completions."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from infernetes.runtime.outputs import CompletionOutput, RequestOutput
from infernetes.runtime.server.context import ServingContext
from infernetes.runtime.server.errors import OpenAIError
from infernetes.runtime.server.prompt_logprobs import prompt_logprobs_json
from infernetes.runtime.server.protocol import ChatCompletionRequest, ChatMessage, random_id
from infernetes.runtime.server.reasoning import ReasoningStream, split_reasoning
from infernetes.runtime.server.streaming import SSE_DONE, merge, sse


def render_messages(ctx: ServingContext, messages: list[ChatMessage], *,
                    add_generation_prompt: bool = True, continue_final_message: bool = False,
                    tools: list | None = None, chat_template: str | None = None,
                    chat_template_kwargs: dict | None = None) -> list[int]:
    """Chat messages to prompt token ids through the model's (or the request's) template."""
    if ctx.tokenizer is None:
        raise OpenAIError(400, "this server runs without a tokenizer; chat is unavailable")
    conversation = []
    for message in messages:
        item = message.model_dump(exclude_none=True)
        if isinstance(message.content, list):
            item["content"] = message_text(message)
        conversation.append(item)
    text = ctx.tokenizer.apply_chat_template(
        conversation, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message, tools=tools,
        chat_template=chat_template, template_kwargs=chat_template_kwargs)
    return ctx.tokenizer.encode(text, add_special_tokens=False)


def message_text(message: ChatMessage) -> str:
    """A message's content as text: content parts must all be text parts."""
    if not isinstance(message.content, list):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise OpenAIError(400, f"content parts must be {{'type': 'text', 'text': str}}; "
                                   f"got {str(part)[:80]}", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


def _logprobs(completion: CompletionOutput, top_k: int) -> dict | None:
    if completion.logprobs is None:
        return None
    content = []
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        chosen = position[token_id]
        top = sorted((p for p in position.values() if p.rank <= top_k), key=lambda p: p.rank)
        content.append({
            "token": chosen.decoded_token, "logprob": chosen.logprob,
            "bytes": list((chosen.decoded_token or "").encode()),
            "top_logprobs": [{"token": p.decoded_token, "logprob": p.logprob,
                              "bytes": list((p.decoded_token or "").encode())}
                             for p in top]})
    return {"content": content}


async def create_chat_completion(ctx: ServingContext, request: ChatCompletionRequest):
    adapter = ctx.check_model(request.model)
    if request.response_format and request.response_format.get("type") not in (None, "text"):
        raise OpenAIError(400, "response_format other than text is not supported yet",
                          "response_format")
    prompt_ids = render_messages(
        ctx, request.messages, add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message, tools=request.tools,
        chat_template=request.chat_template, chat_template_kwargs=request.chat_template_kwargs)
    params = request.to_sampling_params(ctx.sampling_defaults)
    params.max_tokens = ctx.check_length(len(prompt_ids), params.max_tokens, "messages")
    ctx.admit()
    request_id = random_id("chatcmpl")
    created = int(time.time())
    stream = ctx.track(adapter, ctx.engine.generate(request_id, prompt_ids, params, adapter))
    if request.stream:
        return StreamingResponse(_stream(ctx, request, request_id, created, stream,
                                         len(prompt_ids)), media_type="text/event-stream")
    final: RequestOutput | None = None
    async for _, output in merge([stream]):
        final = output
    prefix = ""
    if request.echo and request.messages[-1].role == "assistant":
        prefix = message_text(request.messages[-1])
    choices = [{"index": c.index,
                "message": _message(ctx, prefix, c.text),
                "logprobs": _logprobs(c, request.top_logprobs or 0),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason} for c in final.outputs]
    completion_tokens = sum(len(c.token_ids) for c in final.outputs)
    return JSONResponse({
        "id": request_id, "object": "chat.completion", "created": created,
        "model": request.model or ctx.served_model_name, "system_fingerprint": ctx.system_fingerprint,
        "choices": choices,
        "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                  "total_tokens": len(prompt_ids) + completion_tokens},
        "prompt_logprobs": prompt_logprobs_json(final)})


def _message(ctx: ServingContext, prefix: str, text: str) -> dict:
    """The assistant message of a whole completion; with a reasoning parser, the reasoning
    goes to reasoning_content (null when there is none) and the rest to content."""
    if ctx.reasoning_parser is None:
        return {"role": "assistant", "content": prefix + text}
    split = split_reasoning(ctx.reasoning_parser, text)
    content = split.content if not prefix else prefix + (split.content or "")
    return {"role": "assistant", "content": content, "reasoning_content": split.reasoning}


def _delta(completion: CompletionOutput, reasoning: ReasoningStream | None) -> dict:
    """A streamed piece of one choice: content, or with a reasoning parser, reasoning_content
    while inside the reasoning and content after it (both when a piece ends the reasoning).
    Text that may be part of a think tag waits for the next piece, or for the last one."""
    if reasoning is None:
        return {"content": completion.text} if completion.text else {}
    piece = reasoning.feed(completion.text)
    if completion.finish_reason is not None:
        piece += reasoning.finish()
    delta = {}
    if piece.reasoning:
        delta["reasoning_content"] = piece.reasoning
    if piece.content:
        delta["content"] = piece.content
    return delta


async def _stream(ctx: ServingContext, request: ChatCompletionRequest, request_id: str,
                  created: int, stream: AsyncIterator[RequestOutput],
                  num_prompt_tokens: int) -> AsyncIterator[str]:
    base = {"id": request_id, "object": "chat.completion.chunk", "created": created,
            "model": request.model or ctx.served_model_name, "system_fingerprint": ctx.system_fingerprint}
    for index in range(request.n):  # the role comes first, once per choice
        yield sse({**base, "choices": [{"index": index, "delta": {"role": "assistant",
                                                                  "content": ""},
                                        "logprobs": None, "finish_reason": None}]})
    completion_tokens = 0
    prompt_logprobs_sent = False
    parser = ctx.reasoning_parser
    reasoning = [ReasoningStream(parser) if parser else None for _ in range(request.n)]
    async for _, output in merge([stream]):
        for completion in output.outputs:
            completion_tokens += len(completion.token_ids)
            delta = _delta(completion, reasoning[completion.index])
            logprobs = _logprobs(completion, request.top_logprobs or 0)
            # A piece held back (part of a tag, an unfinished character) still sends the
            # logprobs of its tokens.
            if not delta and completion.finish_reason is None \
                    and not (logprobs and logprobs["content"]):
                continue
            chunk = {**base, "choices": [{
                "index": completion.index, "delta": delta,
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason}]}
            if output.prompt_logprobs is not None and not prompt_logprobs_sent:
                chunk["prompt_logprobs"] = prompt_logprobs_json(output)
                prompt_logprobs_sent = True
            yield sse(chunk)
    if request.stream_options and request.stream_options.include_usage:
        yield sse({**base, "choices": [], "usage": {
            "prompt_tokens": num_prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": num_prompt_tokens + completion_tokens}})
    yield SSE_DONE
