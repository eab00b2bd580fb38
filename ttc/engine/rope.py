"""Rotary position embeddings, computed the way the checkpoints were trained with.

Frequencies and angles are computed in fp32 and only then cast, because greedy decoding must match the reference
implementation token for token and RoPE is where low-precision angles drift first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ttc.engine.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> Tensor:
    """Per-pair rotation speeds, with linear or Llama-3 context scaling applied."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        return _llama3(inv_freq, rope)
    return inv_freq


def _llama3(inv_freq: Tensor, rope: RopeConfig) -> Tensor:
    """Llama 3 slows only the low-frequency pairs, blending smoothly across the medium band."""
    low_wavelen = rope.original_max_positions / rope.low_freq_factor
    high_wavelen = rope.original_max_positions / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryTable:
    """cos/sin for every position seen so far, grown on demand and indexed by absolute position."""

    def __init__(self, rope: RopeConfig, head_dim: int, device: torch.device, dtype: torch.dtype) -> None:
        self.inv_freq = inverse_frequencies(rope, head_dim).to(device)
        self.device = device
        self.dtype = dtype
        self.cos = torch.empty(0, head_dim, device=device, dtype=dtype)
        self.sin = torch.empty(0, head_dim, device=device, dtype=dtype)

    def _grow(self, needed: int) -> None:
        size = max(needed, 2 * self.cos.shape[0], 256)
        positions = torch.arange(size, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos = angles.cos().to(self.dtype)
        self.sin = angles.sin().to(self.dtype)

    def lookup(self, positions: Tensor, largest: int) -> tuple[Tensor, Tensor]:
        """cos and sin of shape ``positions.shape + (head_dim,)``; ``largest`` bounds ``positions`` (no sync)."""
        if largest >= self.cos.shape[0]:
            self._grow(largest + 1)
        return self.cos[positions], self.sin[positions]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, T, H, D] by per-position angles ``cos``/``sin`` [B, T, D] (half-split pairing)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


__all__ = ["RotaryTable", "apply_rotary", "inverse_frequencies"]
