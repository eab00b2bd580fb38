"""The decoder forward: embeddings, pre-norm layers (RMSNorm, RoPE, grouped-query attention, SwiGLU), final norm.

The forward never owns a KV cache. Each layer hands its fresh keys and values to an ``AttentionPlan``, which
stores them wherever the caller keeps KV (blocks of the shared tree, or a scratch buffer) and answers with the
attention over the segments those queries read. That is what lets one batched forward serve branches of many
requests whose KV lives in a shared tree: a plan attends through ``ttc.kernels.layout_attention``, which reads each
shared block once for every branch that includes it, over a forest layout the plan checked once for all layers.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ttc.engine.config import ModelConfig
from ttc.engine.rope import RotaryTable, apply_rotary
from ttc.engine.weights import LayerWeights, ModelWeights


class AttentionPlan(Protocol):
    """Where a forward's KV goes and what each query row attends over."""

    def attend(self, layer: int, q: Tensor, keys: Tensor, values: Tensor, scale: float) -> Tensor:
        """Store this layer's new ``keys``/``values`` [B, T, H_kv, D] and return the attention of ``q``
        [B, T, H_q, D] over the segments each row reads."""
        ...


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm with the statistics in fp32, cast back before the gain, as the checkpoints were trained."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class Transformer:
    """A Llama/Qwen2 decoder over loaded weights; stateless apart from the rotary table."""

    def __init__(self, config: ModelConfig, weights: ModelWeights, device: torch.device, dtype: torch.dtype):
        self.config = config
        self.weights = weights
        self.device = device
        self.dtype = dtype
        self.rotary = RotaryTable(config.rope, config.head_dim, device, dtype)
        self.scale = config.head_dim**-0.5
        self._q_size = config.num_heads * config.head_dim
        self._kv_size = config.num_kv_heads * config.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V one token occupies across all layers."""
        c = self.config
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * self.dtype.itemsize

    @torch.inference_mode()
    def hidden_states(self, tokens: Tensor, positions: Tensor, largest_position: int, plan: AttentionPlan) -> Tensor:
        """Final-norm hidden states [B, T, hidden] for ``tokens`` [B, T] at absolute ``positions`` [B, T]."""
        x = F.embedding(tokens, self.weights.embed)
        cos, sin = self.rotary.lookup(positions, largest_position)
        for index, layer in enumerate(self.weights.layers):
            x = x + self._attention(index, layer, rms_norm(x, layer.input_norm, self.config.rms_norm_eps),
                                    cos, sin, plan)
            x = x + self._mlp(layer, rms_norm(x, layer.post_norm, self.config.rms_norm_eps))
        return rms_norm(x, self.weights.final_norm, self.config.rms_norm_eps)

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        """fp32 logits for hidden states [..., hidden]."""
        return F.linear(hidden, self.weights.lm_head).float()

    def _attention(
        self, index: int, layer: LayerWeights, h: Tensor, cos: Tensor, sin: Tensor, plan: AttentionPlan
    ) -> Tensor:
        batch, steps, _ = h.shape
        c = self.config
        qkv = F.linear(h, layer.qkv, layer.qkv_bias)
        q, k, v = qkv[..., : self._q_size], qkv[..., self._q_size : -self._kv_size], qkv[..., -self._kv_size :]
        q = apply_rotary(q.reshape(batch, steps, c.num_heads, c.head_dim), cos, sin)
        k = apply_rotary(k.reshape(batch, steps, c.num_kv_heads, c.head_dim), cos, sin)
        v = v.reshape(batch, steps, c.num_kv_heads, c.head_dim)
        out = plan.attend(index, q.contiguous(), k, v, self.scale)
        return F.linear(out.reshape(batch, steps, self._q_size), layer.o_proj, layer.o_bias)

    @staticmethod
    def _mlp(layer: LayerWeights, h: Tensor) -> Tensor:
        gate, up = F.linear(h, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, layer.down, layer.down_bias)


__all__ = ["AttentionPlan", "Transformer", "rms_norm"]
