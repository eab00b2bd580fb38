"""Step embedders and clustering: the n-gram default, a backend that embeds, a model from a local folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tree_doubles import TablePRM

from ttc import solve
from ttc.errors import BackendError, ConfigError
from ttc.strategies.embed import (
    BackendEmbedder,
    HashedNgramEmbedder,
    TransformerEmbedder,
    cluster,
    embed_steps,
    resolve_embedder,
)
from ttc.testing import ScriptedBackend, guessing_responder

pytestmark = pytest.mark.anyio


def test_ngram_vectors_are_unit_deterministic_and_surface_similar() -> None:
    texts = ["x = 3 + 4 = 7", "x = 4 + 3 = 7", "The circle's area is pi r squared", ""]
    first = HashedNgramEmbedder().embed(texts)
    again = HashedNgramEmbedder().embed(texts)
    assert np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first[:3], axis=1), 1.0)
    assert not first[3].any()
    assert first[0] @ first[1] > 0.6 > first[0] @ first[2]


def test_cluster_by_threshold_and_by_count() -> None:
    vectors = HashedNgramEmbedder().embed(["x = 3 + 4 = 7", "the area of a circle", "x = 4 + 3 = 7",
                                           "area of the circle"])
    assert cluster(vectors, threshold=0.5) == [0, 1, 0, 1]
    assert cluster(vectors, threshold=1e-6) == [0, 1, 2, 3]
    assert cluster(vectors, n_clusters=1) == [0, 0, 0, 0]
    assert cluster(vectors[:1], threshold=0.5) == [0]
    assert cluster(np.zeros((0, 4)), threshold=0.5) == []
    with pytest.raises(ConfigError):
        cluster(vectors)


def test_empty_steps_are_apart_from_everything() -> None:
    vectors = HashedNgramEmbedder().embed(["", "", "x = 1"])
    assert cluster(vectors, threshold=0.5) == [0, 1, 2]


class Embeds(ScriptedBackend):
    def embed(self, sequences: list[list[int]]) -> list[list[float]]:
        return [[float(len(s)), 1.0] for s in sequences]


async def test_backend_embedder_passes_token_ids_and_normalises() -> None:
    embedder = resolve_embedder("auto", Embeds(["a"]))
    assert isinstance(embedder, BackendEmbedder)
    vectors = await embed_steps(embedder, ["ignored", "ignored"], [[1, 2, 3], [4]])
    assert vectors == pytest.approx(np.array([[3, 1], [1, 1]]) / np.sqrt([[10], [2]]))



class EmbedsBadly(ScriptedBackend):
    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__(["a"])
        self.rows = rows

    def embed(self, sequences: list[list[int]]) -> list[list[float]]:
        return self.rows


@pytest.mark.parametrize(
    ("rows", "says"),
    [
        ([[1.0, float("nan")], [1.0, 2.0]], "not finite"),
        ([[1.0, float("inf")], [1.0, 2.0]], "not finite"),
        ([[1.0, 2.0, 3.0, 4.0]], "1 rows for 2 sequences"),  # reshape(2, -1) used to split it silently
        ([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]], "3 rows for 2 sequences"),
        ([[1.0, 2.0], [1.0]], "not a matrix"),
    ],
)
async def test_backend_embeddings_of_the_wrong_shape_or_non_finite_are_backend_errors(
        rows: list[list[float]], says: str) -> None:
    embedder = BackendEmbedder(EmbedsBadly(rows))
    with pytest.raises(BackendError, match=says):
        await embed_steps(embedder, ["a", "b"], [[1], [2]])


class NanEmbedder:
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.full((len(texts), 4), np.nan)


async def test_text_embedder_returning_nan_and_cluster_on_nan_raise_typed_errors() -> None:
    with pytest.raises(ConfigError, match="not finite"):
        await embed_steps(NanEmbedder(), ["a", "b"], [[1], [2]])
    with pytest.raises(ConfigError, match="not finite"):
        cluster(np.array([[1.0, np.nan], [1.0, 0.0]]), threshold=0.5)

def test_resolve_embedder_names() -> None:
    plain = ScriptedBackend(["a"])
    assert isinstance(resolve_embedder("auto", plain), HashedNgramEmbedder)
    assert isinstance(resolve_embedder("ngram", Embeds(["a"])), HashedNgramEmbedder)
    with pytest.raises(ConfigError, match="cannot embed"):
        resolve_embedder("backend", plain)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_embedder("/no/such/folder", plain)


def test_a_folder_without_a_model_is_refused_before_a_search_spends_anything(tmp_path: Path) -> None:
    """The model was loaded at the first clustering, so a small search never noticed and a larger one failed
    halfway."""
    pytest.importorskip("transformers")
    backend = ScriptedBackend(guessing_responder)
    with pytest.raises(ConfigError, match="cannot load an embedding model"):
        solve("What is 2 + 3?", 96, strategy="ets", backend=backend, store=False, embedder=str(tmp_path),
              verifier=TablePRM())
    assert backend.calls == []


@pytest.mark.slow
def test_transformer_embedder_loads_a_local_folder(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "x", "=", "1", "+", "2", "the", "area", "circle"]
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path)
    embedder = resolve_embedder(str(tmp_path), ScriptedBackend(["a"]))
    assert isinstance(embedder, TransformerEmbedder)
    vectors = embedder.embed(["x = 1 + 2", "the area circle", "x = 1 + 2"])
    assert vectors.shape == (3, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert np.allclose(vectors[0], vectors[2])
    # Padding must not change a text's vector: the short text alone equals it batched with a longer one.
    alone = embedder.embed(["x = 1 + 2"])
    assert np.allclose(alone[0], vectors[0], atol=1e-6)


def test_asking_for_as_many_clusters_as_steps_keeps_identical_steps_together() -> None:
    """maxclust gave every step its own cluster once asked for as many as there are steps, so ETS kept duplicates
    as if they covered other paths."""
    a, b, zero = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]
    assert cluster(np.array([a, a, a, b]), n_clusters=4) == [0, 0, 0, 1]
    assert cluster(np.array([a, a, a, b]), n_clusters=9) == [0, 0, 0, 1]
    assert cluster(np.array([zero, zero, a]), n_clusters=3) == [0, 1, 2]  # empty steps are far from everything
    # Identical rows came out 2e-16 apart while two rows differing in the 8th digit clipped to 0: the cut split the
    # identical pair and merged the other.
    rng = np.random.default_rng(0)
    for _ in range(1000):  # a step whose copy rounds to a distance above 0 from it
        step = rng.normal(size=8)
        unit = step / np.linalg.norm(step)
        if 1.0 - float(unit @ unit) > 0:
            break
    other = rng.normal(size=8)
    nearly = other.copy()
    nearly[0] += 1e-8
    assert cluster(np.array([step, step, other, nearly]), n_clusters=4) == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match="n_clusters must be an int >= 1"):
        cluster(np.array([a, b]), n_clusters=0)
