"""Open a model folder: config, weights and tokenizer, on the chosen device and dtype.

CPU runs in fp32 (CPU half precision is slow and inexact); CUDA defaults to bf16 where the GPU supports it.
Every missing file is reported together with what a usable folder contains, so a wrong path fails in one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ttc.engine.config import ModelConfig, load_config
from ttc.engine.model import Transformer
from ttc.engine.weights import load_weights
from ttc.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoadedModel:
    folder: Path
    config: ModelConfig
    model: Transformer
    tokenizer: Tokenizer


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type not in ("cpu", "cuda"):  # mps, xpu, meta: the engine is built and tested on these two only
        raise ConfigError(f"device {device!r} is not supported by the local engine; use 'cpu', 'cuda' or 'cuda:N'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The requested dtype, or fp32 on CPU and bf16/fp16 on CUDA."""
    if dtype is None:
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in _DTYPES:
        resolved = _DTYPES[dtype]
    else:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"dtype {resolved} is not supported; use float32, bfloat16 or float16")
    return resolved


def load_tokenizer(folder: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found; the local engine needs a fast-tokenizer tokenizer.json next to the weights"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses from Rust
        raise ConfigError(f"cannot load {path}: {exc}; expected a Hugging Face tokenizers JSON file") from exc


def load_model(
    folder: str | Path, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """Load a Llama/Qwen2 checkpoint folder (config.json, *.safetensors, tokenizer.json)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"model folder {root} does not exist; pass a folder holding config.json, *.safetensors and tokenizer.json"
        )
    config = load_config(root)
    tokenizer = load_tokenizer(root)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    weights = load_weights(root, config, resolved_device, resolved_dtype)
    return LoadedModel(root, config, Transformer(config, weights, resolved_device, resolved_dtype), tokenizer)


__all__ = ["LoadedModel", "load_model", "load_tokenizer", "resolve_device", "resolve_dtype"]
