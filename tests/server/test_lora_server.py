"""Adapters over HTTP with the openai client: loaded at run time (API key required), listed
with their parent, selected by `model`, unloaded; a broken adapter is refused and harms
nothing; an adapter in use cannot be unloaded."""
from __future__ import annotations

import threading

import httpx
import pytest
import torch

from infernetes import LLM, LoRARequest, SamplingParams
from infernetes.runtime.config import LoRAConfig
from live_server import start_server

KEY = "sk-lora-test"
PROMPT = [5, 17, 33, 2, 99, 140]


@pytest.fixture(scope="module")
def adapter_folder(tiny_models, tmp_path_factory) -> str:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                torch.nn.init.normal_(module.lora_A["default"].weight, std=0.3)
                torch.nn.init.normal_(module.lora_B["default"].weight, std=0.3)
    folder = tmp_path_factory.mktemp("sql-adapter")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def server(tiny_models):
    live = start_server(api_keys=[KEY], model=tiny_models["llama"], skip_tokenizer_init=True,
                        lora=LoRAConfig(max_loras=2, max_lora_rank=8), max_model_len=256)
    yield live
    live.stop()


def _client(server):
    from openai import OpenAI
    return OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def _post(server, path, body, key=KEY):
    return httpx.post(f"{server.url}{path}", json=body,
                      headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60)


def test_load_use_list_and_unload(server, tiny_models, adapter_folder):
    assert _post(server, "/v1/load_lora_adapter",
                 {"lora_name": "sql", "lora_path": adapter_folder}, key=None).status_code == 401
    loaded = _post(server, "/v1/load_lora_adapter",
                   {"lora_name": "sql", "lora_path": adapter_folder})
    assert loaded.status_code == 200, loaded.text
    client = _client(server)
    cards = {m.id: m for m in client.models.list().data}
    base_name = server.ctx.served_model_name
    assert cards["sql"].model_extra["parent"] == base_name
    with_adapter = client.completions.create(model="sql", prompt=PROMPT, max_tokens=8,
                                             temperature=0, extra_body={"ignore_eos": True})
    base = client.completions.create(model=base_name, prompt=PROMPT, max_tokens=8,
                                     temperature=0, extra_body={"ignore_eos": True})
    offline = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True,
                  enable_lora=True, max_lora_rank=8)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    expected = offline.generate([{"prompt_token_ids": PROMPT}], params,
                                LoRARequest("sql", 1, adapter_folder))[0].outputs[0].token_ids
    assert with_adapter.model == "sql" and base.model == base_name
    assert with_adapter.usage.completion_tokens == 8
    assert _token_ids(server, "sql") == expected
    assert _token_ids(server, base_name) != expected  # the adapter changes the output
    assert _post(server, "/v1/unload_lora_adapter", {"lora_name": "sql"}).status_code == 200
    gone = _post(server, "/v1/completions", {"model": "sql", "prompt": PROMPT, "max_tokens": 2})
    assert gone.status_code == 404
    assert _post(server, "/v1/unload_lora_adapter", {"lora_name": "sql"}).status_code == 404


def _token_ids(server, model: str) -> list[int]:
    """The completion's token ids (vLLM's return_token_ids: the tiny model has no tokenizer)."""
    reply = _post(server, "/v1/completions", {
        "model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True})
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["token_ids"]


def test_broken_adapter_is_refused_and_serving_goes_on(server, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{not json")
    refused = _post(server, "/v1/load_lora_adapter",
                    {"lora_name": "broken", "lora_path": str(tmp_path)})
    assert refused.status_code == 400
    assert "broken" in refused.json()["error"]["message"]
    assert "broken" not in {m.id for m in _client(server).models.list().data}
    ok = _post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2})
    assert ok.status_code == 200


def test_an_adapter_in_use_is_not_unloaded(server, adapter_folder):
    assert _post(server, "/v1/load_lora_adapter",
                 {"lora_name": "busy", "lora_path": adapter_folder}).status_code == 200
    done = threading.Event()
    thread = threading.Thread(target=lambda: (_post(server, "/v1/completions", {
        "model": "busy", "prompt": PROMPT, "max_tokens": 200, "ignore_eos": True}),
        done.set()))
    thread.start()
    try:
        for _ in range(200):
            if server.ctx.adapters.in_flight["busy"]:
                break
            threading.Event().wait(0.01)
        refused = _post(server, "/v1/unload_lora_adapter", {"lora_name": "busy"})
        assert refused.status_code == 400 and "in flight" in refused.json()["error"]["message"]
    finally:
        thread.join(60)
    assert done.is_set()
    assert _post(server, "/v1/unload_lora_adapter", {"lora_name": "busy"}).status_code == 200
