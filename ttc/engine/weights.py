"""Checkpoint tensors, read from safetensors and laid out for the engine's forward.

q/k/v and gate/up projections are concatenated at load time so a layer does two matmuls where the checkpoint
has five: on small batches the per-call overhead, not the arithmetic, dominates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ttc.engine.config import ModelConfig
from ttc.errors import ConfigError


@dataclass(frozen=True)
class LayerWeights:
    input_norm: Tensor
    qkv: Tensor
    qkv_bias: Tensor | None
    o_proj: Tensor
    o_bias: Tensor | None
    post_norm: Tensor
    gate_up: Tensor
    gate_up_bias: Tensor | None
    down: Tensor
    down_bias: Tensor | None


@dataclass(frozen=True)
class ModelWeights:
    embed: Tensor
    layers: tuple[LayerWeights, ...]
    final_norm: Tensor
    lm_head: Tensor


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"no *.safetensors weights in {folder}; save the model with save_pretrained(safe_serialization=True)"
        )
    return files


def read_tensors(folder: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint by name (shards merged)."""
    from safetensors.torch import load_file

    tensors: dict[str, Tensor] = {}
    for file in _safetensors_files(folder):
        if not file.is_file():
            raise ConfigError(f"{file} is listed in the safetensors index but missing")
        tensors.update(load_file(str(file)))
    return tensors


class _Taker:
    """Pops named tensors, converting them; a missing name is a ConfigError naming the folder."""

    def __init__(self, tensors: dict[str, Tensor], folder: Path, device: torch.device, dtype: torch.dtype):
        self.tensors = tensors
        self.folder = folder
        self.device = device
        self.dtype = dtype

    def get(self, name: str) -> Tensor:
        if name not in self.tensors:
            raise ConfigError(f"{self.folder}: weight {name!r} is missing; is this a Llama/Qwen2 checkpoint?")
        return self.tensors[name].to(device=self.device, dtype=self.dtype)

    def maybe(self, name: str) -> Tensor | None:
        return self.get(name) if name in self.tensors else None


def _fuse(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts, dim=0).contiguous()


def _fuse_bias(parts: list[Tensor | None]) -> Tensor | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    if len(present) != len(parts):
        raise ConfigError("some but not all fused projections have biases; the checkpoint is inconsistent")
    return _fuse(present)


def _layer(take: _Taker, i: int, config: ModelConfig) -> LayerWeights:
    p = f"model.layers.{i}."
    attn = [f"{p}self_attn.{n}_proj" for n in ("q", "k", "v")]
    qkv_bias = _fuse_bias([take.maybe(f"{a}.bias") for a in attn])
    if config.qkv_bias and qkv_bias is None:
        raise ConfigError(f"{take.folder}: layer {i} has no q/k/v biases but the config requires them")
    mlp = [f"{p}mlp.{n}_proj" for n in ("gate", "up")]
    return LayerWeights(
        input_norm=take.get(f"{p}input_layernorm.weight"),
        qkv=_fuse([take.get(f"{a}.weight") for a in attn]),
        qkv_bias=qkv_bias,
        o_proj=take.get(f"{p}self_attn.o_proj.weight"),
        o_bias=take.maybe(f"{p}self_attn.o_proj.bias"),
        post_norm=take.get(f"{p}post_attention_layernorm.weight"),
        gate_up=_fuse([take.get(f"{m}.weight") for m in mlp]),
        gate_up_bias=_fuse_bias([take.maybe(f"{m}.bias") for m in mlp]),
        down=take.get(f"{p}mlp.down_proj.weight"),
        down_bias=take.maybe(f"{p}mlp.down_proj.bias"),
    )


def load_weights(folder: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> ModelWeights:
    """Read and lay out the weights; an untied checkpoint without ``lm_head.weight`` is rejected."""
    take = _Taker(read_tensors(folder), folder, device, dtype)
    embed = take.get("model.embed_tokens.weight")
    if tuple(embed.shape) != (config.vocab_size, config.hidden_size):
        raise ConfigError(
            f"{folder}: embed_tokens has shape {tuple(embed.shape)}, config says "
            f"({config.vocab_size}, {config.hidden_size})"
        )
    lm_head = take.maybe("lm_head.weight")
    if lm_head is None:
        if not config.tie_word_embeddings:
            raise ConfigError(f"{folder}: lm_head.weight is missing and tie_word_embeddings is false")
        lm_head = embed
    layers = tuple(_layer(take, i, config) for i in range(config.num_layers))
    return ModelWeights(embed=embed, layers=layers, final_norm=take.get("model.norm.weight"), lm_head=lm_head)


__all__ = ["LayerWeights", "ModelWeights", "load_weights", "read_tensors"]
