"""Loading model folders: what is accepted, and the errors that say what is missing or unsupported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ttc.engine.config import load_config
from ttc.engine.loading import load_model
from ttc.engine.synthetic import EOS_ID
from ttc.errors import ConfigError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_loads_both_families(llama_path: Path, qwen2_path: Path) -> None:
    llama = load_model(llama_path, device="cpu")
    qwen = load_model(qwen2_path, device="cpu")
    assert llama.config.model_type == "llama" and not llama.config.qkv_bias
    assert llama.config.tie_word_embeddings and llama.model.weights.lm_head is llama.model.weights.embed
    assert qwen.config.model_type == "qwen2" and qwen.config.qkv_bias
    assert qwen.model.weights.layers[0].qkv_bias is not None
    assert qwen.model.weights.lm_head is not qwen.model.weights.embed
    assert llama.model.dtype == torch.float32 and llama.model.device.type == "cpu"
    assert llama.config.eos_token_ids == (EOS_ID,)
    c = llama.config
    assert llama.model.kv_bytes_per_token == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4


def test_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(tmp_path / "nope")


@pytest.mark.parametrize(
    ("remove", "message"),
    [("config.json", "config.json not found"), ("tokenizer.json", "tokenizer.json not found"),
     ("model.safetensors", "no \\*.safetensors")],
)
def test_missing_file_is_a_config_error(llama_path: Path, tmp_path: Path, remove: str, message: str) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    (folder / remove).unlink()
    with pytest.raises(ConfigError, match=message) as info:
        load_model(folder)
    assert str(folder) in str(info.value)


def test_unsupported_architecture_is_rejected(llama_path: Path, tmp_path: Path) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    _edit_config(folder, model_type="gpt2")
    with pytest.raises(ConfigError, match=r"model_type 'gpt2' is not supported.*llama.*qwen2"):
        load_model(folder)


@pytest.mark.parametrize(
    ("architectures", "message"),
    [
        (["Qwen2ForSequenceClassification"], r"Qwen2ForSequenceClassification is a reward/classification .*pooling"),
        (["LlamaForSequenceClassification"], r"LlamaForSequenceClassification is a reward/classification"),
        (["LlamaForTokenClassification"], r"LlamaForTokenClassification is a reward/classification"),
        (["Qwen2ForProcessRewardModel"], r"Qwen2ForProcessRewardModel is a reward/classification"),
        (["MistralForCausalLM"], r"MistralForCausalLM is not supported.*LlamaForCausalLM, Qwen2ForCausalLM"),
        ("LlamaForCausalLM", r"architectures must be a list"),
    ],
)
def test_a_checkpoint_that_is_not_a_causal_lm_is_refused(llama_path: Path, tmp_path: Path, architectures: object,
                                                          message: str) -> None:
    """A classifier on a Llama/Qwen2 body has its ``model_type``, and with tied embeddings every weight the
    engine reads: it loaded and generated from the embedding table as if it were a language model."""
    folder = _copy(llama_path, tmp_path / "model")
    _edit_config(folder, architectures=architectures)
    with pytest.raises(ConfigError, match=message):
        load_model(folder)


def test_a_causal_lm_among_the_architectures_is_accepted(llama_path: Path, tmp_path: Path) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    _edit_config(folder, architectures=["LlamaForSequenceClassification", "LlamaForCausalLM"])
    assert load_model(folder).config.model_type == "llama"
    _edit_config(folder, architectures=None)
    assert load_model(folder).config.model_type == "llama"


def test_a_tied_sequence_classifier_saved_by_transformers_is_refused(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from ttc.engine.synthetic import char_tokenizer

    tokenizer = char_tokenizer()
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=48,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         num_labels=1, pad_token_id=0)
    Qwen2ForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="Qwen2ForSequenceClassification is a reward/classification"):
        load_model(tmp_path, device="cpu")


def test_unsupported_rope_scaling_is_rejected(llama_path: Path, tmp_path: Path) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    _edit_config(folder, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0})
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        load_model(folder)


def test_missing_weight_is_reported(llama_path: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(llama_path, tmp_path / "model")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"model.layers.1.mlp.down_proj.weight.*missing"):
        load_model(folder)


def test_old_style_rope_keys_are_read(llama_path: Path, tmp_path: Path) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    raw = json.loads((folder / "config.json").read_text())
    raw.pop("rope_parameters")
    raw.update(rope_theta=250000.0, rope_scaling={"type": "linear", "factor": 2.0})
    (folder / "config.json").write_text(json.dumps(raw))
    rope = load_config(folder).rope
    assert (rope.theta, rope.kind, rope.factor) == (250000.0, "linear", 2.0)


def test_rope_keys_are_read_as_transformers_reads_them(llama_path: Path, tmp_path: Path) -> None:
    """A legacy rope_scaling beside rope_parameters was ignored (transformers applies it in its place: greedy text
    differed from the first token), a yarn one there loaded as plain rope, and llama3's original context fell back
    to 8192 where transformers takes max_position_embeddings (logprobs 0.07 off). Each expectation is what
    transformers 5's LlamaConfig reads from the same config.json."""
    folder = _copy(llama_path, tmp_path / "model")
    raw = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "rope_theta"}
    base = {"rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}
    (folder / "config.json").write_text(json.dumps({**raw, **base, "rope_scaling": {"type": "linear", "factor": 4.0}}))
    rope = load_config(folder).rope
    assert (rope.theta, rope.kind, rope.factor) == (10000.0, "linear", 4.0)  # rope_parameters' theta is replaced
    (folder / "config.json").write_text(json.dumps({**raw, **base, "rope_scaling": {"rope_type": "yarn",
                                                                                   "factor": 4.0}}))
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        load_config(folder)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "rope_theta": 1e4}
    (folder / "config.json").write_text(json.dumps({**raw, "max_position_embeddings": 1024,
                                                    "rope_parameters": llama3}))
    assert load_config(folder).rope.original_max_positions == 1024
    (folder / "config.json").write_text(json.dumps({**raw, "max_position_embeddings": 1024,
                                                    "rope_parameters": {**llama3,
                                                                        "original_max_position_embeddings": 32}}))
    assert load_config(folder).rope.original_max_positions == 32


def test_generation_config_eos_wins(llama_path: Path, tmp_path: Path) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert load_config(folder).eos_token_ids == (7, 9)


def test_an_eos_id_outside_the_vocabulary_is_refused(llama_path: Path, tmp_path: Path) -> None:
    """No token could be it, so decoding stopped only at its token limit."""
    folder = _copy(llama_path, tmp_path / "model")
    vocab = load_config(folder).vocab_size
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, vocab + 5]}))
    with pytest.raises(ConfigError, match=rf"generation_config.json: eos_token_id \[{vocab + 5}\] is outside"):
        load_config(folder)


def test_integer_weights_are_refused_as_a_quantized_checkpoint(llama_path: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = _copy(llama_path, tmp_path / "model")
    tensors = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = tensors[name].round().to(torch.int8)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match=rf"{name}' is torch.int8, not a float: quantized checkpoints"):
        load_model(folder)


def test_bad_device_and_dtype(llama_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model(llama_path, dtype="int8")
    for device in ("meta", "mps", "xpu"):  # a model without data, or raw RuntimeError/AssertionError from torch
        with pytest.raises(ConfigError, match="is not supported by the local engine; use 'cpu', 'cuda'"):
            load_model(llama_path, device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            load_model(llama_path, device="cuda")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": "abc"}, "hidden_size must be a positive integer, got 'abc'"),
        ({"vocab_size": None}, "has no 'vocab_size'"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps must be a positive number"),
        ({"eos_token_id": "2"}, "eos_token_id must be a token id or a list of token ids, got '2'"),
        # A rope factor of 0 ran, and every logprob came out NaN; a malformed one raised ValueError/TypeError.
        ({"rope_parameters": {"rope_type": "linear", "factor": 0, "rope_theta": 1e4}}, "factor must be a positive"),
        ({"rope_parameters": {"rope_type": "linear", "factor": "two"}}, "factor must be a positive number"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0,
                              "high_freq_factor": 2.0}}, "needs low_freq_factor != high_freq_factor"),
        ({"partial_rotary_factor": "half"}, "partial_rotary_factor 'half' is not supported"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 is not supported"),
        # Int8 weights were cast to floats without their scales: the model loaded and wrote garbage.
        ({"quantization_config": {"quant_method": "bitsandbytes"}}, "quantized checkpoints are not supported"),
    ],
)
def test_a_bad_config_value_names_its_key(llama_path: Path, tmp_path: Path, changes: dict[str, object],
                                          message: str) -> None:
    """They raised ValueError or TypeError from int(), or (eos_token_id) were dropped, so decoding never stopped."""
    folder = _copy(llama_path, tmp_path / "model")
    _edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=message):
        load_model(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_hidden_layers": 1}, r"the weights hold 2 layers and config.json says num_hidden_layers=1"),
        ({"num_key_value_heads": 4}, r"self_attn.k_proj.weight' has shape .* where config.json implies"),
        ({"head_dim": 8}, r"self_attn.q_proj.weight' has shape .* where config.json implies"),
        ({"intermediate_size": 12}, r"mlp.gate_proj.weight' has shape .* where config.json implies"),
    ],
)
def test_weights_that_the_config_does_not_describe_are_refused_at_load(
        llama_path: Path, tmp_path: Path, changes: dict[str, object], message: str) -> None:
    """A config with fewer layers ran a truncated model without a word; wrong head sizes failed at the first
    forward as a reshape error."""
    folder = _copy(llama_path, tmp_path / "model")
    _edit_config(folder, **changes)
    with pytest.raises(ConfigError, match=message):
        load_model(folder)


@pytest.mark.parametrize("content", [b"garbage" * 10, b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_damaged_weights_are_a_config_error(llama_path: Path, tmp_path: Path, content: bytes) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(ConfigError, match=r"model.safetensors .*damaged or incomplete|weight .* is missing"):
        load_model(folder)


@pytest.mark.parametrize("index", ["nope", '{"weight_map": []}', '{"weight_map": {"a": 1}}'])
def test_a_malformed_shard_index_is_a_config_error(llama_path: Path, tmp_path: Path, index: str) -> None:
    folder = _copy(llama_path, tmp_path / "model")
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ConfigError, match=r"model\.safetensors\.index\.json"):
        load_model(folder)


def _edit_weights(folder: Path, add: dict[str, int] | None = None, drop: tuple[str, ...] = ()) -> None:
    """Adds seeded random tensors of the given lengths to the checkpoint and drops the named ones."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    generator = torch.Generator().manual_seed(7)
    for name, size in (add or {}).items():
        tensors[name] = torch.randn(size, generator=generator) * 0.5
    for name in drop:
        del tensors[name]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _biases(folder: Path, names: tuple[str, ...]) -> dict[str, int]:
    """Every layer's ``names`` biases (``self_attn.o_proj`` ...), with their lengths from the stored weights."""
    from safetensors.torch import load_file

    return {name[: -len("weight")] + "bias": tensor.shape[0]
            for name, tensor in load_file(str(folder / "model.safetensors")).items()
            if name.startswith("model.layers.") and any(f".{n}.weight" in name for n in names)}


async def _matches_transformers(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    from ttc.backends.local import LocalBackend

    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = [3 + (i * 7) % 60 for i in range(24)]
    with torch.no_grad():
        ref = torch.log_softmax(reference(torch.tensor([prompt])).logits[0].float(), dim=-1)
    async with LocalBackend.from_pretrained(folder, threads=1) as backend:
        scored = await backend.prompt_logprobs(prompt)
    for i in range(1, len(prompt)):
        assert scored.token_logprob(i) == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)


@pytest.mark.anyio
@pytest.mark.parametrize("family", ["llama", "qwen2"])
async def test_biases_the_config_does_not_declare_are_ignored_as_transformers_ignores_them(
        llama_path: Path, qwen2_path: Path, tmp_path: Path, family: str) -> None:
    """An o_proj or MLP bias in the weights of a model whose config declares none (Qwen2 never has them) was
    added to every layer's output: the logprobs were not the model's."""
    folder = _copy(llama_path if family == "llama" else qwen2_path, tmp_path / "model")
    extra = ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    _edit_weights(folder, add=_biases(folder, extra + (("self_attn.q_proj",) if family == "llama" else ())))
    _edit_config(folder, attention_bias=family == "qwen2", mlp_bias=family == "qwen2")
    await _matches_transformers(folder)
    layer = load_model(folder).model.weights.layers[0]
    assert layer.o_bias is None and layer.gate_up_bias is None and layer.down_bias is None
    assert (layer.qkv_bias is None) == (family == "llama")


@pytest.mark.anyio
async def test_every_bias_the_config_declares_is_read_and_a_missing_one_is_refused(
        llama_path: Path, tmp_path: Path) -> None:
    """With attention_bias and mlp_bias true, a missing o_proj or MLP bias loaded silently as zeros."""
    complete = _copy(llama_path, tmp_path / "complete")
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj")
    biases = _biases(complete, names)
    _edit_weights(complete, add=biases)
    _edit_config(complete, attention_bias=True, mlp_bias=True)
    await _matches_transformers(complete)
    for name in names:
        folder = _copy(complete, tmp_path / name)
        _edit_weights(folder, drop=(f"model.layers.1.{name}.bias",))
        setting = "mlp_bias=true" if name.startswith("mlp") else "attention_bias=true"
        with pytest.raises(ConfigError, match=rf"'model.layers.1.{name}.bias' is missing, but {setting}"):
            load_model(folder)
