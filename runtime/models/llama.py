"""The Llama family: Llama 2/3 (incl. llama3 rope scaling, tied embeddings), Mistral (sliding
window), Qwen2 (QKV bias), SmolLM2 and the DeepSeek-R1 Llama/Qwen distills share this code.

Input is a flat batch of tokens (no padding): input_ids [num_tokens], positions [num_tokens].
"""
from __future__ import annotations

import torch
from torch import nn

from infernetes.kernels.cpu.decoder_layer import (
    LORA_PARTS, DecoderLayerWeights, DecoderStack, decode_batch, decoder_layer_weights,
    decoder_layers)
from infernetes.runtime.layers.activation import silu_and_mul
from infernetes.runtime.layers.attention import Attention, AttentionMetadata
from infernetes.runtime.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from infernetes.runtime.layers.layernorm import RMSNorm
from infernetes.runtime.layers.linear import (
    MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear)
from infernetes.runtime.layers.rotary import RopeAtPositions, RotaryEmbedding
from infernetes.runtime.model_config import ModelArchConfig


class LlamaAttention(nn.Module):
    def __init__(self, config: ModelArchConfig, dtype: torch.dtype):
        super().__init__()
        head_dim = config.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim,
                                          config.num_attention_heads,
                                          config.num_key_value_heads, config.qkv_bias, dtype)
        self.o_proj = RowParallelLinear(config.num_attention_heads * head_dim,
                                        config.hidden_size, config.o_bias, dtype)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = head_dim
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        self.attn = Attention(self.num_heads, self.num_kv_heads, head_dim, head_dim ** -0.5,
                              config.sliding_window)

    def forward(self, rope: RopeAtPositions, hidden: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qk_size = self.q_size + self.kv_size
        qkv = self.qkv_proj(hidden)
        # Queries and keys sit side by side in the projection: rotate them in one pass.
        qk = rope.rotate(qkv[:, :qk_size].view(num_tokens, -1, self.head_dim), self.num_heads)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = qkv[:, qk_size:].view(num_tokens, self.num_kv_heads, self.head_dim)
        out = self.attn(q, k, v, meta)
        return self.o_proj(out.view(num_tokens, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelArchConfig, dtype: torch.dtype):
        super().__init__()
        size = config.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [size, size],
                                                       config.mlp_bias, dtype)
        self.down_proj = RowParallelLinear(size, config.hidden_size, config.mlp_bias, dtype)
        self.kernels = "torch"  # set by the model runner (kernel_backend.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.kernels == "triton":
            from infernetes.kernels.triton.activation import silu_and_mul as silu_and_mul_triton
            return self.down_proj(silu_and_mul_triton(gate_up))
        return self.down_proj(silu_and_mul(gate_up))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: ModelArchConfig, dtype: torch.dtype):
        super().__init__()
        self.self_attn = LlamaAttention(config, dtype)
        self.mlp = LlamaMLP(config, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)

    def fused_weights(self) -> DecoderLayerWeights:
        """The C view of this layer's parameters and KV cache, for the fused decode
        (kernels/cpu/decoder_layer.py), with its adapters' slots when LoRA is enabled; valid
        while the cache stays allocated."""
        key_cache, value_cache = self.self_attn.attn.kv_cache
        attention, mlp = self.self_attn, self.mlp
        lora = attention.qkv_proj.lora  # a LoRALayerState, or None without adapters
        return decoder_layer_weights(
            input_norm=self.input_layernorm.weight,
            post_norm=self.post_attention_layernorm.weight,
            qkv_weight=attention.qkv_proj.weight, qkv_bias=attention.qkv_proj.bias,
            o_weight=attention.o_proj.weight, o_bias=attention.o_proj.bias,
            gate_up_weight=mlp.gate_up_proj.weight, gate_up_bias=mlp.gate_up_proj.bias,
            down_weight=mlp.down_proj.weight, down_bias=mlp.down_proj.bias,
            key_cache=key_cache, value_cache=value_cache, num_heads=attention.num_heads,
            eps=self.input_layernorm.eps, scale=attention.attn.scale,
            sliding_window=attention.attn.sliding_window,
            lora=None if lora is None else lora.manager.slot_weights(lora.layer, LORA_PARTS))

    def forward(self, rope, hidden, residual, meta):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(rope, hidden, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelArchConfig, dtype: torch.dtype, max_position: int):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
        self.rotary = RotaryEmbedding(config.head_dim, max_position, config.rope)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, dtype) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self._attention = [layer.self_attn.attn for layer in self.layers]  # a plain list
        self._stack: DecoderStack | None = None  # built on first fused decode
        self._stack_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def decoder_stack(self) -> DecoderStack:
        """Every layer's C view in one array (decoder_layers), rebuilt when a KV cache is
        (re)allocated."""
        caches = [attention.kv_cache for attention in self._attention]
        if self._stack is None or any(a is not b for a, b in zip(caches, self._stack_caches)):
            self._stack = DecoderStack([layer.fused_weights() for layer in self.layers])
            self._stack_caches = caches
        return self._stack

    def forward(self, input_ids, positions, meta):
        hidden = self.embed_tokens(input_ids)
        if meta.fused_decode:  # the layers, their adapters and the final norm in one call
            lora = self.layers[0].self_attn.qkv_proj.lora
            batch = decode_batch(positions, meta.slot_mapping, meta.decode_block_tables,
                                 meta.decode_seq_lens, self.rotary.cos_sin,
                                 None if lora is None else lora.manager.token_slots)
            hidden, _ = decoder_layers(self.decoder_stack(), batch, hidden, None,
                                       self.norm.weight, self.norm.eps)
            return hidden
        residual = None
        rope = self.rotary.for_positions(positions, hidden.dtype)
        for layer in self.layers:
            hidden, residual = layer(rope, hidden, residual, meta)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    # checkpoint name -> (our parameter name, shard id) for matrices we store packed.
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config: ModelArchConfig, dtype: torch.dtype, max_position: int):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, dtype, max_position)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, dtype)
        if config.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """-> hidden states [num_tokens, hidden_size]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.model.layers]
