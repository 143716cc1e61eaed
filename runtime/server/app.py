"""The OpenAI-compatible HTTP application."""
from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from infernetes import __version__
from infernetes.runtime.server.chat import create_chat_completion, render_messages
from infernetes.runtime.server.completions import create_completion
from infernetes.runtime.server.context import ServingContext
from infernetes.runtime.server.errors import OpenAIError, error_response, install_error_handlers
from infernetes.runtime.server.adapters import LoRAModule
from infernetes.runtime.server.protocol import (
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, LoadLoRAAdapterRequest,
    ModelCard, ModelList, TokenizeRequest, UnloadLoRAAdapterRequest)


def build_app(ctx: ServingContext) -> FastAPI:
    app = FastAPI(title="Infernetes", version=__version__,
                  description="OpenAI-compatible LLM server")
    app.state.ctx = ctx
    install_error_handlers(app)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if ctx.api_keys and request.url.path.startswith("/v1"):
            header = request.headers.get("authorization", "")
            token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") \
                else ""
            if not any(hmac.compare_digest(token, key) for key in ctx.api_keys):
                return error_response(401, "invalid or missing API key")
        return await call_next(request)

    @app.get("/health")
    async def health() -> Response:
        if ctx.engine.is_healthy():
            return Response(status_code=200)
        return error_response(503, "the engine loop is not making progress")

    @app.get("/metrics")
    async def metrics() -> Response:
        if ctx.metrics is None:
            return error_response(404, "metrics are disabled")
        return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        base = ModelCard(id=ctx.served_model_name, root=str(ctx.engine.engine.model_folder),
                         max_model_len=ctx.max_model_len)
        return ModelList(data=[base] + [
            ModelCard(id=name, root=adapter.lora_path, parent=ctx.served_model_name,
                      max_model_len=ctx.max_model_len)
            for name, adapter in ctx.adapters.adapters.items()])

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: LoadLoRAAdapterRequest) -> Response:
        await ctx.load_adapter(LoRAModule(request.lora_name, request.lora_path,
                                          request.base_model_name))
        return Response(f"Success: LoRA adapter '{request.lora_name}' added successfully.",
                        media_type="text/plain")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: UnloadLoRAAdapterRequest) -> Response:
        await ctx.unload_adapter(request.lora_name)
        return Response(f"Success: LoRA adapter '{request.lora_name}' removed successfully.",
                        media_type="text/plain")

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        return await create_completion(ctx, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        return await create_chat_completion(ctx, request)

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest) -> JSONResponse:
        ctx.check_model(request.model)
        if (request.prompt is None) == (request.messages is None):
            raise OpenAIError(400, "give exactly one of prompt and messages", "prompt")
        if request.messages is not None:
            tokens = render_messages(ctx, request.messages,
                                     add_generation_prompt=request.add_generation_prompt)
        else:
            tokens = ctx.tokenizer.encode(request.prompt, request.add_special_tokens)
        return JSONResponse({"tokens": tokens, "count": len(tokens),
                             "max_model_len": ctx.max_model_len})

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest) -> JSONResponse:
        ctx.check_model(request.model)
        vocab = ctx.engine.engine.arch.vocab_size
        bad = [t for t in request.tokens if not 0 <= t < vocab]
        if bad:
            raise OpenAIError(400, f"token ids {bad[:5]} are outside the vocabulary "
                                   f"[0, {vocab})", "tokens")
        return JSONResponse({"prompt": ctx.tokenizer.decode(request.tokens)})

    return app
