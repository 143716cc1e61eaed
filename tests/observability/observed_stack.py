"""What the live dashboard tests observe: a runtime server and an operator metrics endpoint,
both scraped by a Prometheus that loads the alert and recording rules, and traffic that
moves every metric family.

The runtime serves a random-weight Llama with a byte-level tokenizer built here (2 layers,
hidden size 64): the dashboards read metrics, not text, and the tiny model makes a loaded
test machine's traffic take a second instead of a minute. Its KV cache (12 blocks of 16
tokens) is smaller than four concurrent requests need, and the queue limit is low, so
waiting, preemptions and queue-full rejections can happen for real."""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import httpx
import torch
from prometheus_client import start_http_server
from safetensors.torch import save_file

from infernetes.operator.metrics import OperatorMetrics
from infernetes.operator.spec import DownloadStatus, InferenceServiceStatus, Phase

from dashboard_queries import ALERTS, RECORDING
from prometheus_server import PrometheusServer, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live_server import LiveServer  # noqa: E402  (tests/server is not on the path by itself)

SERVED_MODEL_NAME = "tiny-observed"
SHARED_PREFIX = "System: you are a terse assistant that answers in one line. "  # 3 KV blocks
MAX_TOKENS = 32
CONCURRENCY = 8
WAVES = 3


@dataclass
class ObservedStack:
    runtime: LiveServer
    operator_metrics: OperatorMetrics
    operator_server: WSGIServer  # start_http_server's
    operator_url: str
    prometheus: PrometheusServer
    statuses: list[int]  # HTTP status of every traffic request


def tiny_model_folder(folder: Path) -> Path:
    """A Llama checkpoint with random weights and a byte-level BPE tokenizer (256 byte tokens
    and an end-of-text token)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)},
                                     merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                       use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))

    vocab, hidden, inter, layers, heads, kv_heads, head_dim = 264, 64, 128, 2, 4, 2, 16
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "eos_token_id": 256, "torch_dtype": "float32",
        "hidden_act": "silu"}))
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    weights = {"model.embed_tokens.weight": randn(vocab, hidden),
               "model.norm.weight": torch.ones(hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        weights |= {
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_proj.weight": randn(heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": randn(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": randn(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": randn(hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": randn(inter, hidden),
            p + "mlp.up_proj.weight": randn(inter, hidden),
            p + "mlp.down_proj.weight": randn(hidden, inter)}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def start_runtime(model_folder: Path) -> LiveServer:
    from infernetes.runtime.config import CacheConfig, EngineConfig, SchedulerConfig
    from infernetes.runtime.engine.async_engine import AsyncLLM
    from infernetes.runtime.engine.llm_engine import LLMEngine
    from infernetes.runtime.server.app import build_app
    from infernetes.runtime.server.context import ServingContext
    from infernetes.runtime.server.metrics import Metrics
    config = EngineConfig(model=str(model_folder), served_model_name=SERVED_MODEL_NAME,
                          dtype="float32", max_model_len=128,
                          cache=CacheConfig(num_gpu_blocks_override=12),
                          scheduler=SchedulerConfig(max_num_seqs=4))
    metrics = Metrics(SERVED_MODEL_NAME)
    ctx = ServingContext(AsyncLLM(lambda: LLMEngine(config), on_stats=metrics.record),
                         SERVED_MODEL_NAME, [], metrics, max_num_queued_requests=6)
    return LiveServer(ctx, build_app(ctx))


def start_operator_metrics() -> tuple[OperatorMetrics, str, WSGIServer]:
    """An OperatorMetrics registry with three InferenceServices (Ready, Downloading, Failed),
    served as the operator serves it; every labelled child exists before the first scrape, so
    rate() sees the increments that follow."""
    metrics = OperatorMetrics()
    _observe_services(metrics, downloaded=100 << 20)
    metrics.download_failures.labels("ml", "broken", "AuthFailed").inc()
    _reconcile_pass(metrics)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    return metrics, f"127.0.0.1:{port}", server


def _observe_services(metrics: OperatorMetrics, downloaded: int) -> None:
    total = 1 << 30
    metrics.observe("ml", "qwen", InferenceServiceStatus(
        phase=Phase.Ready, desired_replicas=2, ready_replicas=2, replicas=2,
        download=DownloadStatus(bytes=total, total_bytes=total)))
    metrics.observe("ml", "llama", InferenceServiceStatus(
        phase=Phase.Downloading, desired_replicas=1,
        download=DownloadStatus(bytes=downloaded, total_bytes=total)))
    metrics.observe("ml", "broken", InferenceServiceStatus(
        phase=Phase.Failed, desired_replicas=1, download=DownloadStatus(bytes=0)))


def _reconcile_pass(metrics: OperatorMetrics) -> None:
    for seconds in (0.004, 0.03, 0.2):
        metrics.reconciles.labels("ok").inc()
        metrics.reconcile_duration.observe(seconds)
    metrics.reconciles.labels("error").inc()
    metrics.reconcile_errors.labels("ApiError").inc()
    metrics.actions.labels("create", "Deployment").inc()
    metrics.actions.labels("patch", "Service").inc()


def _stream_completion(url: str, i: int, statuses: list[int]) -> None:
    request = {"model": SERVED_MODEL_NAME, "prompt": f"{SHARED_PREFIX}Question {i}: why?",
               "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/completions", json=request, timeout=120) as reply:
        for _ in reply.iter_lines():
            pass
        statuses.append(reply.status_code)


def drive_traffic(runtime_url: str, operator_metrics: OperatorMetrics,
                  statuses: list[int]) -> None:
    """WAVES waves of CONCURRENCY streaming completions sharing a prefix, a scrape apart, with
    operator activity alongside."""
    _stream_completion(runtime_url, -1, statuses)  # fills the prefix cache
    for wave in range(WAVES):
        threads = [threading.Thread(target=_stream_completion,
                                    args=(runtime_url, wave * CONCURRENCY + i, statuses))
                   for i in range(CONCURRENCY)]
        for thread in threads:
            thread.start()
        _reconcile_pass(operator_metrics)
        operator_metrics.download_failures.labels("ml", "broken", "AuthFailed").inc()
        _observe_services(operator_metrics, downloaded=(200 + 100 * wave) << 20)
        for thread in threads:
            thread.join(120)
        time.sleep(1.2)


def start_stack(prometheus_binary: Path, folder: Path) -> ObservedStack:
    """Everything up, traffic done, and Prometheus holding the final values of both targets
    with every rule evaluated on them."""
    runtime = start_runtime(tiny_model_folder(folder / "model"))
    operator_metrics, operator_target, operator_server = start_operator_metrics()
    (folder / "prometheus").mkdir()
    try:
        prometheus = PrometheusServer(
            prometheus_binary, folder / "prometheus",
            {"infernetes-runtime": runtime.url.removeprefix("http://"),
             "infernetes-operator": operator_target},
            [RECORDING, ALERTS])
    except Exception:
        operator_server.shutdown()
        runtime.stop()
        raise
    stack = ObservedStack(runtime, operator_metrics, operator_server,
                          f"http://{operator_target}", prometheus, [])
    try:
        prometheus.wait_for("a first scrape of both targets",
                            lambda: len(prometheus.query("up == 1")) == 2)
        drive_traffic(runtime.url, operator_metrics, stack.statuses)
        _wait_for_final_scrape(stack)
        since = time.time()
        prometheus.wait_for("a rule evaluation after the last scrape",
                            lambda: prometheus.rules_evaluated_since(since))
    except Exception:
        stop_stack(stack)
        raise
    return stack


def _wait_for_final_scrape(stack: ObservedStack) -> None:
    """Prometheus holds the counters' current values (nothing moves after the traffic)."""
    runtime_tokens = stack.runtime.ctx.metrics.registry.get_sample_value(
        "infernetes_generation_tokens_total", {"model_name": SERVED_MODEL_NAME})
    reconciles = stack.operator_metrics.registry.get_sample_value(
        "infernetes_operator_reconciles_total", {"result": "ok"})
    query = stack.prometheus.query

    def scraped() -> bool:
        tokens = query("sum(infernetes_generation_tokens_total)")
        passes = query('sum(infernetes_operator_reconciles_total{result="ok"})')
        return (bool(tokens) and float(tokens[0]["value"][1]) == runtime_tokens
                and bool(passes) and float(passes[0]["value"][1]) == reconciles)
    stack.prometheus.wait_for("the last scrape of both targets", scraped)


def stop_stack(stack: ObservedStack) -> None:
    stack.prometheus.stop()
    stack.operator_server.shutdown()
    stack.operator_server.server_close()
    stack.runtime.stop()
