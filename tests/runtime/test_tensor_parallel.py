"""Tensor parallelism on CPU (gloo): greedy tokens with N ranks equal those of one process,
through chunked prefill, a prefix-cache hit, decode and a LoRA request; each rank holds and
reads about 1/N of the weights; sizes a model cannot take are refused naming the flag; a dead
worker stops the engine and leaves no process behind."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch

from infernetes import LLM, SamplingParams
from infernetes.runtime.config import ConfigError
from infernetes.runtime.model_config import ModelArchConfig
from infernetes.runtime.parallel.executor import WorkerDiedError
from infernetes.runtime.parallel.validation import check_tensor_parallel, supported_sizes
from lora_adapters import lora_requests, make_peft_adapter

MAX_NEW = 8
# all-linear: the column-parallel projections (q, k, v, gate, up: B split by rows) and the
# row-parallel ones (o, down: A split by columns) all carry the adapter.
ADAPTER = dict(r=8, lora_alpha=16, target_modules="all-linear")


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory) -> dict[str, str]:
    """model name -> folder of a LoRA adapter for it."""
    from transformers import AutoModelForCausalLM
    folders = {}
    for name in ("llama", "qwen2"):
        base = AutoModelForCausalLM.from_pretrained(tiny_models[name], dtype=torch.float32)
        folder = tmp_path_factory.mktemp(f"tp-lora-{name}")
        make_peft_adapter(base, ADAPTER, folder, seed=7, std=0.3)
        folders[name] = str(folder)
    return folders


def _workload():
    """Prompts (the last shares a 20-token prefix with the one before) and their adapters."""
    rng = random.Random(4)
    shared = [rng.randrange(1, 384) for _ in range(20)]
    prompts = [[rng.randrange(1, 384) for _ in range(n)] for n in (1, 7, 30)]
    prompts += [shared + [rng.randrange(1, 384) for _ in range(n)] for n in (3, 11)]
    names = [None, "ft", None, "ft", "ft"]
    return prompts, names


def _run(folder: str, adapter: str, tp: int) -> dict:
    prompts, names = _workload()
    requests = lora_requests(names, {"ft": adapter})
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    # 8-token blocks and a 16-token budget: chunked prefill and a prefix-cache hit.
    with LLM(folder, dtype="float32", skip_tokenizer_init=True, tensor_parallel_size=tp,
             block_size=8, max_num_batched_tokens=16, enable_lora=True, max_lora_rank=8) as llm:
        first = llm.generate([{"prompt_token_ids": p} for p in prompts[:-1]], params,
                             lora_request=requests[:-1])
        last = llm.generate([{"prompt_token_ids": prompts[-1]}], params,
                            lora_request=requests[-1])
        runner = llm.engine.runner
        workers = getattr(runner, "workers", None)
        return {"tokens": [o.outputs[0].token_ids for o in first + last],
                "cached": last[0].num_cached_tokens,
                "weight_bytes": [w.weight_bytes for w in workers] if workers
                else [runner.weight_bytes],
                "bytes_read": [w.checkpoint_bytes_read for w in workers] if workers
                else [runner.checkpoint_bytes_read]}


@pytest.fixture(scope="module")
def single_process(tiny_models, adapters) -> dict[str, dict]:
    runs = {name: _run(tiny_models[name], adapters[name], 1) for name in adapters}
    for name, run in runs.items():  # the adapter's requests differ from the base model's
        base = _run_base_tokens(tiny_models[name])
        assert [t for t, n in zip(run["tokens"], _workload()[1]) if n] != \
            [t for t, n in zip(base, _workload()[1]) if n]
    return runs


@pytest.mark.parametrize("name,tp", [("llama", 2), ("llama", 4), ("qwen2", 2)])
def test_greedy_tokens_equal_one_process(tiny_models, adapters, single_process, name, tp):
    expected = single_process[name]
    got = _run(tiny_models[name], adapters[name], tp)
    assert got["tokens"] == expected["tokens"]
    assert got["cached"] >= 16 and expected["cached"] >= 16
    # Each rank holds about 1/N of the weights and read only that from the checkpoint: a
    # share of every split tensor, plus the norms (and, at 4 ranks over 2 KV heads, the
    # replicated K/V rows) that every rank keeps whole.
    total, total_read = expected["weight_bytes"][0], expected["bytes_read"][0]
    slack = 1.05 if tp == 2 else 1.6
    for held, read in zip(got["weight_bytes"], got["bytes_read"]):
        assert total / tp <= held <= total / tp * slack
        assert total_read / tp <= read <= total_read / tp * slack


def _run_base_tokens(folder: str) -> list[list[int]]:
    prompts, _ = _workload()
    llm = LLM(folder, dtype="float32", skip_tokenizer_init=True)
    params = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
    return [o.outputs[0].token_ids
            for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]


def test_sizes_the_model_cannot_take_are_refused_naming_the_flag(tiny_models, monkeypatch):
    arch = ModelArchConfig.from_folder(__import__("pathlib").Path(tiny_models["llama"]))
    assert supported_sizes(arch) == [1, 2, 4]  # 4 heads, 2 KV heads, intermediate 96
    with pytest.raises(ConfigError, match=r"--tensor-parallel-size 3: the model's 4 attention "
                                          r"heads .* supports, up to 16: 1, 2, 4\)"):
        LLM(tiny_models["llama"], skip_tokenizer_init=True, tensor_parallel_size=3)
    with pytest.raises(ConfigError, match="--tensor-parallel-size must be a positive integer"):
        LLM(tiny_models["llama"], skip_tokenizer_init=True, tensor_parallel_size=0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--tensor-parallel-size 2 needs 2 GPUs, but 1 is "
                                          "visible"):
        check_tensor_parallel(arch, 2, torch.device("cuda"))


def test_smollm2_splits_over_three_ranks_only(smollm2, tmp_path):
    """9 query heads, 3 KV heads, intermediate 1536: sizes 1 and 3 (9 would leave 1536/9).
    At 3 ranks, chat greedy tokens equal one process's, for the base model and an adapter."""
    from infernetes.benchmarks.lora import write_adapter
    arch = smollm2.engine.arch
    assert (arch.num_attention_heads, arch.num_key_value_heads) == (9, 3)
    assert supported_sizes(arch) == [1, 3]
    with pytest.raises(ConfigError, match="--tensor-parallel-size 2: the model's 9 attention "
                                          "heads are not divisible by it"):
        LLM(dtype="float32", tensor_parallel_size=2)
    adapter = write_adapter(tmp_path / "ft", smollm2.engine.model_folder, rank=8, seed=3,
                            std=0.1)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    conversations = [question, question, [{"role": "user", "content": "Name a colour."}]]
    requests = [None] + lora_requests(["ft", "ft"], {"ft": str(adapter)})
    params = SamplingParams(temperature=0, max_tokens=12)
    tokens = {}
    for tp in (1, 3):
        with LLM(dtype="float32", max_model_len=512, kv_cache_memory="128MiB",
                 enable_lora=True, max_lora_rank=8, tensor_parallel_size=tp) as llm:
            outputs = llm.chat(conversations, params, lora_request=requests)
            tokens[tp] = [o.outputs[0].token_ids for o in outputs]
            if tp == 3:
                assert llm.engine.runner.workers[0].weight_bytes < \
                    smollm2.engine.runner.weight_bytes / 2
    assert tokens[3] == tokens[1]
    assert tokens[1][0] != tokens[1][1]  # the adapter changes the answer


def test_a_dead_worker_stops_the_engine_and_the_other_ranks(tiny_models):
    llm = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True,
              tensor_parallel_size=2)
    executor = llm.engine.runner
    params = SamplingParams(temperature=0, max_tokens=2)
    assert len(llm.generate([{"prompt_token_ids": [1, 2, 3]}], params)) == 1
    os.kill(executor.workers[1].pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while executor.processes[0].is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in executor.processes)  # rank 0 was stopped too
    with pytest.raises(WorkerDiedError, match="rank 1 .* exited with code -9"):
        llm.engine.check_health()
    with pytest.raises(WorkerDiedError):
        llm.generate([{"prompt_token_ids": [1, 2, 3]}], params)
    llm.shutdown()


def test_a_dropped_engine_stops_its_workers(tiny_models):
    import gc
    llm = LLM(tiny_models["llama"], dtype="float32", skip_tokenizer_init=True,
              tensor_parallel_size=2)
    processes = llm.engine.runner.processes
    del llm
    gc.collect()
    for process in processes:
        process.join(10)
    assert [p.exitcode for p in processes] == [0, 0]  # asked to stop, not killed
