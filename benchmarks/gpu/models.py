"""The model shapes the GPU benchmarks run, their sizes and costs, and both engines' copies.

Shapes are those of published Llama checkpoints; weights are random (the engine's
`load_format="dummy"`, transformers' `from_config` initialisation, each from a fixed seed), so
no checkpoint is needed: a folder with the shape's config.json is all our engine reads.

Counts (parameters, bytes and operations of a decode step) are closed-form here and checked
against transformers' own model on the meta device in tests/benchmarks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelShape:
    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    # -- parameter counts ----------------------------------------------------------------

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def layer_matmul_params(self) -> int:
        """q, k, v, o projections and the gated MLP of one decoder layer."""
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attention = self.hidden_size * (q + 2 * kv) + q * self.hidden_size
        return attention + 3 * self.hidden_size * self.intermediate_size

    @property
    def param_count(self) -> int:
        """Distinct parameters (a tied LM head shares the embedding's)."""
        norms = (2 * self.num_hidden_layers + 1) * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else self.embedding_params
        return (self.embedding_params + self.num_hidden_layers * self.layer_matmul_params
                + norms + lm_head)

    @property
    def matmul_params_per_token(self) -> int:
        """Weights each token multiplies through: every layer's matrices and the LM head
        (2 flops each). The embedding is a gather, not a product."""
        return self.num_hidden_layers * self.layer_matmul_params + self.embedding_params

    @property
    def decode_weight_params(self) -> int:
        """Weights a decode step reads whole: all but an untied embedding table, of which a
        step reads only its batch's rows (counted with the activations in `decode_step_cost`)."""
        untied_embedding = 0 if self.tie_word_embeddings else self.embedding_params
        return self.param_count - untied_embedding

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.param_count * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys and values of one token over all layers."""
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    def summary(self, dtype_bytes: int = 2) -> dict[str, Any]:
        return {**asdict(self), "param_count": self.param_count,
                "weight_bytes": self.weight_bytes(dtype_bytes),
                "decode_weight_bytes": self.decode_weight_params * dtype_bytes,
                "kv_bytes_per_token": self.kv_bytes_per_token(dtype_bytes),
                "dtype_bytes": dtype_bytes}


LLAMA_1B = ModelShape(  # Llama-3.2-1B
    name="llama-1b", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True,
    head_dim=64, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    bos_token_id=128000, eos_token_id=128001)

LLAMA_8B = ModelShape(  # Llama-3.1-8B
    name="llama-8b", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False,
    head_dim=128, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    bos_token_id=128000, eos_token_id=128001)

# A few kilobytes of weights: smoke runs of the benchmark code on CPU, not a measurement.
TINY = ModelShape(
    name="tiny", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, intermediate_size=128, vocab_size=512, tie_word_embeddings=True,
    head_dim=16, max_position_embeddings=2048, rope_theta=10000.0)

SHAPES = {shape.name: shape for shape in (LLAMA_1B, LLAMA_8B, TINY)}


# -- the cost of one decode step -------------------------------------------------------------

@dataclass(slots=True)
class StepCost:
    weight_bytes: int
    kv_bytes: int  # keys and values read for every context, and the new token's written
    activation_bytes: int  # embedding rows read and hidden states written, per sequence
    flops: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def decode_step_cost(shape: ModelShape, context_lens: list[int],
                     dtype_bytes: int = 2) -> StepCost:
    """Fewest bytes and operations of one decode step over sequences whose contexts (the new
    token included) are `context_lens`: weights read once, each context's K/V read once.

    Operations: 2 per weight per token, plus attention's 4 per (query head, key, head dim):
    two for q.k and two for p.v. Small terms (norms, rotary, softmax, sampling) are left out.
    """
    batch = len(context_lens)
    tokens_attended = sum(context_lens)
    kv_per_token = shape.kv_bytes_per_token(dtype_bytes)
    attention_flops = (4 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim
                       * tokens_attended)
    return StepCost(
        weight_bytes=shape.decode_weight_params * dtype_bytes,
        kv_bytes=(tokens_attended + batch) * kv_per_token,
        activation_bytes=2 * batch * shape.hidden_size * dtype_bytes,
        flops=2 * shape.matmul_params_per_token * batch + attention_flops)


# -- the two engines' copies of a shape ---------------------------------------------------------

def hf_config(shape: ModelShape, dtype_name: str = "bfloat16"):
    """transformers' LlamaConfig of the shape (rope scaling in the style the installed
    transformers reads; it writes either `rope_scaling` or `rope_parameters`)."""
    from transformers import LlamaConfig
    return LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings, rms_norm_eps=shape.rms_norm_eps,
        rope_theta=shape.rope_theta,
        rope_scaling=dict(shape.rope_scaling) if shape.rope_scaling else None,
        tie_word_embeddings=shape.tie_word_embeddings, bos_token_id=shape.bos_token_id,
        eos_token_id=shape.eos_token_id, torch_dtype=dtype_name)


def write_config_folder(shape: ModelShape, folder: Path | str) -> Path:
    """A model folder holding only config.json: enough for `load_format="dummy"`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config(shape).save_pretrained(folder)
    return folder


def _from_config(config, dtype):
    from transformers import AutoModelForCausalLM
    try:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        return AutoModelForCausalLM.from_config(config, torch_dtype=dtype)


def build_hf_model(shape: ModelShape, device: Any, dtype: Any = None, seed: int = 0):
    """transformers' model of the shape with its own random initialisation from `seed`, built
    directly on `device` (no host copy of an 8B model), in eval mode."""
    import torch
    dtype = dtype or torch.bfloat16
    torch.manual_seed(seed)
    with torch.device(device):
        model = _from_config(hf_config(shape), dtype)
    return model.eval()


def hf_param_count_on_meta(shape: ModelShape) -> int:
    """Distinct parameters of transformers' model of the shape, built without memory."""
    import torch
    with torch.device("meta"):
        model = _from_config(hf_config(shape), torch.bfloat16)
    return sum(p.numel() for p in model.parameters())  # parameters() lists tied ones once
