"""Checkpoint tensors, read from safetensors and laid out for the engine's forward.

q/k/v and gate/up projections are concatenated at load time so a layer does two matmuls where the checkpoint
has five: on small batches the per-call overhead, not the arithmetic, dominates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast

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
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"cannot read {index} ({exc}); expected a JSON object with a 'weight_map'") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConfigError(f"{index}: 'weight_map' must map each tensor name to a .safetensors file name")
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
        try:
            tensors.update(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own error type from Rust
            raise ConfigError(f"cannot read the weights in {file} ({exc}); the file is damaged or incomplete: "
                              "save or copy the model again") from None
    return tensors


class _Taker:
    """Pops named tensors, converting them; a missing name is a ConfigError naming the folder."""

    def __init__(self, tensors: dict[str, Tensor], folder: Path, device: torch.device, dtype: torch.dtype):
        self.tensors = tensors
        self.folder = folder
        self.device = device
        self.dtype = dtype

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """The tensor ``name``, which must have ``shape`` (the config's): a mismatch is a ConfigError at load
        time, not a reshape error at the first forward, nor a model that quietly runs fewer layers."""
        if name not in self.tensors:
            raise ConfigError(f"{self.folder}: weight {name!r} is missing; is this a Llama/Qwen2 checkpoint?")
        tensor = self.tensors[name]
        if not tensor.is_floating_point():
            raise ConfigError(f"{self.folder}: weight {name!r} is {tensor.dtype}, not a float: quantized "
                              "checkpoints are not supported by the local engine; use the model's float weights")
        if tuple(tensor.shape) != shape:
            raise ConfigError(f"{self.folder}: weight {name!r} has shape {tuple(tensor.shape)} where config.json "
                              f"implies {shape}; the config does not describe these weights")
        return tensor.to(device=self.device, dtype=self.dtype)

    def maybe(self, name: str, shape: tuple[int, ...]) -> Tensor | None:
        return self.get(name, shape) if name in self.tensors else None

    def bias(self, name: str, shape: tuple[int, ...], declared: str | None) -> Tensor | None:
        """The bias ``name`` exactly where the config declares one (``declared`` says how), as transformers builds
        the layer: one the config does not declare is ignored, as transformers ignores an unexpected tensor
        (adding it changed every output), and a declared one that is missing is an error, not a zero bias."""
        if declared is None:
            return None
        if name not in self.tensors:
            raise ConfigError(f"{self.folder}: weight {name!r} is missing, but {declared} says the layer has a "
                              "bias; fix config.json or use the complete weights")
        return self.get(name, shape)


def _fuse(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts, dim=0).contiguous()


def _fuse_bias(parts: list[Tensor | None]) -> Tensor | None:
    """The fused biases, or None where the config declares none (``_Taker.bias`` gives all of them or none)."""
    return None if parts[0] is None else _fuse(cast(list[Tensor], parts))


def _declared(config: ModelConfig) -> tuple[str | None, str | None, str | None]:
    """How the config declares q/k/v, output-projection and MLP biases; None where it declares none."""
    qkv = "model_type 'qwen2'" if config.model_type == "qwen2" else "attention_bias=true"
    return (qkv if config.qkv_bias else None, "attention_bias=true" if config.o_bias else None,
            "mlp_bias=true" if config.mlp_biases else None)


def _layer(take: _Taker, i: int, config: ModelConfig) -> LayerWeights:
    p = f"model.layers.{i}."
    hidden, inner = config.hidden_size, config.intermediate_size
    q_rows, kv_rows = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    attn = [(f"{p}self_attn.q_proj", q_rows), (f"{p}self_attn.k_proj", kv_rows), (f"{p}self_attn.v_proj", kv_rows)]
    mlp = [f"{p}mlp.{n}_proj" for n in ("gate", "up")]
    qkv_bias, o_bias, mlp_bias = _declared(config)
    return LayerWeights(
        input_norm=take.get(f"{p}input_layernorm.weight", (hidden,)),
        qkv=_fuse([take.get(f"{a}.weight", (rows, hidden)) for a, rows in attn]),
        qkv_bias=_fuse_bias([take.bias(f"{a}.bias", (rows,), qkv_bias) for a, rows in attn]),
        o_proj=take.get(f"{p}self_attn.o_proj.weight", (hidden, q_rows)),
        o_bias=take.bias(f"{p}self_attn.o_proj.bias", (hidden,), o_bias),
        post_norm=take.get(f"{p}post_attention_layernorm.weight", (hidden,)),
        gate_up=_fuse([take.get(f"{m}.weight", (inner, hidden)) for m in mlp]),
        gate_up_bias=_fuse_bias([take.bias(f"{m}.bias", (inner,), mlp_bias) for m in mlp]),
        down=take.get(f"{p}mlp.down_proj.weight", (hidden, inner)),
        down_bias=take.bias(f"{p}mlp.down_proj.bias", (hidden,), mlp_bias),
    )


def _layer_count(tensors: dict[str, Tensor]) -> int:
    indices = [int(m.group(1)) for name in tensors if (m := re.match(r"model\.layers\.(\d+)\.", name))]
    return max(indices) + 1 if indices else 0


def load_weights(folder: Path, config: ModelConfig, device: torch.device, dtype: torch.dtype) -> ModelWeights:
    """Read and lay out the weights; an untied checkpoint without ``lm_head.weight`` is rejected."""
    tensors = read_tensors(folder)
    if (stored := _layer_count(tensors)) != config.num_layers:
        raise ConfigError(f"{folder}: the weights hold {stored} layers and config.json says num_hidden_layers="
                          f"{config.num_layers}; the config does not describe these weights")
    take = _Taker(tensors, folder, device, dtype)
    vocab_by_hidden = (config.vocab_size, config.hidden_size)
    embed = take.get("model.embed_tokens.weight", vocab_by_hidden)
    lm_head = take.maybe("lm_head.weight", vocab_by_hidden)
    if lm_head is None:
        if not config.tie_word_embeddings:
            raise ConfigError(f"{folder}: lm_head.weight is missing and tie_word_embeddings is false")
        lm_head = embed
    layers = tuple(_layer(take, i, config) for i in range(config.num_layers))
    final_norm = take.get("model.norm.weight", (config.hidden_size,))
    return ModelWeights(embed=embed, layers=layers, final_norm=final_norm, lm_head=lm_head)


__all__ = ["LayerWeights", "ModelWeights", "load_weights", "read_tensors"]
