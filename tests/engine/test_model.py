"""The engine's own forward against transformers' reference implementation on the same checkpoints (fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ttc.backends.local import LocalBackend
from ttc.engine.synthetic import EOS_ID, build_checkpoint
from ttc.types import Sampling

PROMPTS = ["The quick brown fox", "12 + 30 = ", "Q: why?\nA:"]


def _reference(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _reference_generate(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=EOS_ID
        )
    generated: list[int] = out[0, len(prompt) :].tolist()
    if EOS_ID in generated:
        generated = generated[: generated.index(EOS_ID) + 1]
    # A text of one repeated token would match an engine that ignored attention altogether.
    assert len(set(generated)) > 3, f"the reference checkpoint writes a degenerate text: {generated}"
    return generated


def _reference_logprobs(model: Any, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


@pytest.mark.anyio
async def test_greedy_matches_transformers_generate(checkpoint: Path) -> None:
    reference = _reference(checkpoint)
    async with LocalBackend.from_pretrained(checkpoint, threads=1) as backend:
        for text in PROMPTS:
            prompt = await backend.tokenize(text)
            [ours] = await backend.complete(prompt, 1, Sampling(max_tokens=40, temperature=0.0))
            assert list(ours.token_ids) == _reference_generate(reference, prompt, 40), text


@pytest.mark.anyio
async def test_greedy_branches_of_one_call_all_match_reference(checkpoint: Path) -> None:
    """Several greedy branches decode batched over one shared prompt block; each must equal the reference."""
    reference = _reference(checkpoint)
    async with LocalBackend.from_pretrained(checkpoint, threads=1) as backend:
        prompt = await backend.tokenize(PROMPTS[0])
        expected = _reference_generate(reference, prompt, 25)
        outs = await backend.complete(prompt, 3, Sampling(max_tokens=25, temperature=0.0))
        assert [list(o.token_ids) for o in outs] == [expected] * 3


@pytest.mark.anyio
async def test_prompt_logprobs_match_transformers(checkpoint: Path) -> None:
    reference = _reference(checkpoint)
    async with LocalBackend.from_pretrained(checkpoint, threads=1) as backend:
        prompt = await backend.tokenize("Step 1: add 2 and 3.\nStep 2: 5")
        ref = _reference_logprobs(reference, prompt)
        scored = await backend.prompt_logprobs(prompt, top_k=5)
        assert scored.token_ids == tuple(prompt)
        assert scored.top[0] is None
        for i in range(1, len(prompt)):
            dist = scored.top[i]
            assert dist is not None
            assert scored.token_logprob(i) == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)
            values, ids = ref[i - 1].topk(5)
            for token, value in zip(ids.tolist(), values.tolist(), strict=True):
                assert dist[token] == pytest.approx(value, abs=1e-4)
            assert len(dist) in (5, 6)


@pytest.mark.anyio
async def test_prompt_logprobs_reuse_cached_prefix_and_stay_exact(checkpoint: Path) -> None:
    """Scoring a prompt that extends a scored (or generated) one recomputes only the new positions."""
    reference = _reference(checkpoint)
    async with LocalBackend.from_pretrained(checkpoint, threads=1) as backend:
        base = await backend.tokenize("Question: 7 * 6?\n")
        await backend.prompt_logprobs(base, top_k=2)
        [gen] = await backend.complete(base, 1, Sampling(max_tokens=12, temperature=0.7, seed=5))
        extended = base + list(gen.token_ids) + await backend.tokenize(" so 42")
        before = backend.engine.tree.cached_tokens + backend.engine.tree.live_tokens
        scored = await backend.prompt_logprobs(extended, top_k=2)
        after = backend.engine.tree.cached_tokens + backend.engine.tree.live_tokens
        assert after - before == len(extended) - len(base) - (len(gen.token_ids) - 1)
        ref = _reference_logprobs(reference, extended)
        for i in range(1, len(extended)):
            assert scored.token_logprob(i) == pytest.approx(ref[i - 1, extended[i]].item(), abs=1e-4)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_theta": 10000.0,
        },
    ],
    ids=["linear", "llama3"],
)
@pytest.mark.anyio
async def test_rope_scaling_matches_transformers(tmp_path: Path, rope: dict[str, Any]) -> None:
    path = build_checkpoint(tmp_path, family="llama", seed=3, rope_parameters=rope)
    reference = _reference(path)
    async with LocalBackend.from_pretrained(path, threads=1) as backend:
        prompt = await backend.tokenize("a long enough prompt to rotate through many wavelengths: 0123456789")
        ref = _reference_logprobs(reference, prompt)
        scored = await backend.prompt_logprobs(prompt)
        errors = [abs(scored.token_logprob(i) - ref[i - 1, prompt[i]].item()) for i in range(1, len(prompt))]
        assert max(errors) < 1e-4
