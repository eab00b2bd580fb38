"""What the engine needs to know about a checkpoint, read from its ``config.json`` and validated up front.

Reading the config ourselves (instead of through transformers) keeps loading cheap and lets every unsupported
setting fail at load time with a message that names the file and the setting, rather than as wrong numbers later.
Both config layouts are accepted: ``rope_theta`` / ``rope_scaling`` at the top level (transformers 4) and the
``rope_parameters`` mapping (transformers 5).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ttc.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings; ``kind`` is one of ``SUPPORTED_ROPE_TYPES``."""

    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama- or Qwen2-family decoder."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    rope: RopeConfig
    attention_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    eos_token_ids: tuple[int, ...]

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 always has q/k/v biases; Llama only when ``attention_bias`` says so."""
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        """Llama's output projection has a bias when ``attention_bias`` says so; Qwen2's never has one."""
        return self.model_type == "llama" and self.attention_bias

    @property
    def mlp_biases(self) -> bool:
        """Llama's MLP projections have biases when ``mlp_bias`` says so; Qwen2's never have them."""
        return self.model_type == "llama" and self.mlp_bias


def _eos_ids(value: object, path: Path) -> tuple[int, ...]:
    """``eos_token_id``: an id or a list of ids. Anything else is an error: dropped, decoding would never stop."""
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ids):
        raise ConfigError(f"{path}: eos_token_id must be a token id or a list of token ids, got {value!r}")
    return tuple(ids)


def _int(raw: Mapping[str, Any], key: str, path: Path, default: int | None = None) -> int:
    """A positive whole-number setting (an architecture size); ``default`` where the key is absent or null."""
    value = raw.get(key)
    if value is None:
        if default is None:
            raise ConfigError(f"{path} has no {key!r}; a Llama/Qwen2 config.json must define it")
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{path}: {key} must be a positive integer, got {value!r}")
    return value


def _float(raw: Mapping[str, Any], key: str, path: Path, default: float) -> float:
    value = raw.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
        raise ConfigError(f"{path}: {key} must be a positive number, got {value!r}")
    return float(value)


def _rope(raw: Mapping[str, Any], path: Path) -> RopeConfig:
    """The rotary embedding as transformers (5.x) reads it: a legacy ``rope_scaling`` replaces
    ``rope_parameters`` whole, its theta then the top-level ``rope_theta`` (else 10000); llama3's original context
    defaults to ``max_position_embeddings``."""
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{path}: {key} must be a mapping, got {raw[key]!r}")
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    kind = str(params.get("rope_type", params.get("type", "default")))
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{path}: rope type {kind!r} is not supported; the local engine handles {SUPPORTED_ROPE_TYPES}"
        )
    theta = _float(params, "rope_theta", path, _float(raw, "rope_theta", path, 10000.0))
    # A factor of 0 divided every position into NaN: each must be a positive number, named where it is not.
    low, high = _float(params, "low_freq_factor", path, 1.0), _float(params, "high_freq_factor", path, 4.0)
    if kind == "llama3" and low == high:
        raise ConfigError(f"{path}: llama3 rope needs low_freq_factor != high_freq_factor, both are {low}")
    return RopeConfig(
        theta=theta,
        kind=kind,
        factor=_float(params, "factor", path, 1.0),
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_positions=_int(params, "original_max_position_embeddings", path,
                                    default=_int(raw, "max_position_embeddings", path, default=8192)),
    )


def _check_architectures(raw: Mapping[str, Any], path: Path) -> None:
    """A reward or classification head on a Llama/Qwen2 body shares its ``model_type``; with tied embeddings its
    weights even load, and it would generate from the embedding table as if it were a language model."""
    names = raw.get("architectures")
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: architectures must be a list of class names, got {names!r}")
    supported = {a.lower() for a in SUPPORTED_ARCHITECTURES}
    if not names or any(n.lower() in supported for n in names):
        return
    named = ", ".join(names)
    if any("classification" in n.lower() or "reward" in n.lower() for n in names):
        raise ConfigError(f"{path}: architectures {named} is a reward/classification model, which the local engine "
                          "cannot run (it generates with causal LMs only); serve it with vLLM's pooling runner and "
                          "score with it through VLLMBackend (a `pooling` PRM preset)")
    raise ConfigError(f"{path}: architectures {named} is not supported; the local engine runs "
                      f"{', '.join(SUPPORTED_ARCHITECTURES)} checkpoints")


def _check_supported(raw: Mapping[str, Any], path: Path) -> str:
    model_type = str(raw.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{path}: model_type {model_type!r} is not supported; the local engine runs "
            f"{SUPPORTED_MODEL_TYPES} checkpoints (LlamaForCausalLM, Qwen2ForCausalLM)"
        )
    _check_architectures(raw, path)
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"{path}: hidden_act {act!r} is not supported; expected 'silu' (SwiGLU MLP)")
    if raw.get("use_sliding_window"):
        raise ConfigError(f"{path}: sliding-window attention is not supported; set use_sliding_window=false")
    rotary = raw.get("partial_rotary_factor")
    if rotary is not None and (isinstance(rotary, bool) or rotary != 1):
        raise ConfigError(f"{path}: partial_rotary_factor {rotary!r} is not supported: "
                          "the local engine rotates every dimension (1.0)")
    if raw.get("quantization_config") is not None:
        # Its weights would be cast to floats as they are (int8 codes without their scales): garbage, silently.
        raise ConfigError(f"{path}: quantized checkpoints are not supported by the local engine; use the model's "
                          "fp16/bf16/fp32 weights, or serve this one with vLLM (--backend vllm)")
    return model_type


def parse_config(raw: Mapping[str, Any], path: Path) -> ModelConfig:
    """Validate a decoded ``config.json``; ``path`` only names the source in error messages."""
    model_type = _check_supported(raw, path)
    hidden = _int(raw, "hidden_size", path)
    heads = _int(raw, "num_attention_heads", path)
    kv_heads = _int(raw, "num_key_value_heads", path, default=heads)
    if heads % kv_heads:
        raise ConfigError(f"{path}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    head_dim = _int(raw, "head_dim", path, default=max(1, hidden // heads))
    return ModelConfig(
        model_type=model_type,
        vocab_size=_int(raw, "vocab_size", path),
        hidden_size=hidden,
        intermediate_size=_int(raw, "intermediate_size", path),
        num_layers=_int(raw, "num_hidden_layers", path),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=_float(raw, "rms_norm_eps", path, 1e-6),
        max_positions=_int(raw, "max_position_embeddings", path, default=2048),
        rope=_rope(raw, path),
        attention_bias=bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        eos_token_ids=_eos_ids(raw.get("eos_token_id"), path),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; expected a JSON object") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def load_config(folder: Path) -> ModelConfig:
    """Read ``folder/config.json``; ``generation_config.json``'s EOS ids win when present (as in generate)."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found; a local model folder needs config.json, *.safetensors and tokenizer.json"
        )
    config = parse_config(_read_json(path), path)
    generation = folder / "generation_config.json"
    where = path
    if generation.is_file():
        eos = _eos_ids(_read_json(generation).get("eos_token_id"), generation)
        if eos:
            config, where = replace(config, eos_token_ids=eos), generation
    if outside := [i for i in config.eos_token_ids if i >= config.vocab_size]:
        # No token could ever be one of them: decoding would stop only at its token limit.
        raise ConfigError(f"{where}: eos_token_id {outside} is outside the vocabulary of {config.vocab_size} tokens")
    return config


__all__ = ["ModelConfig", "RopeConfig", "load_config", "parse_config"]
