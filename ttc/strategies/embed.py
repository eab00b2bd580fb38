"""Step embeddings and the clustering ETS uses to tell redundant steps from different ones.

Three embedders, chosen by the ``embedder`` option:

- ``"ngram"``: hashed character n-grams. No model and no dependency, deterministic across processes; it sees
  surface similarity only ("3 + 4 = 7" and "4 + 3 = 7" are close, a paraphrase may not be), which is what a
  search over sampled steps mostly needs to collapse: near-duplicates.
- ``"backend"``: the backend's own hidden states, when it offers ``embed(token_ids_list)`` (the local engine
  does, for one token's forward pass, since the sequences are already in its KV cache). It embeds each step in
  its context: the final hidden state after the step, which is what the model will continue from.
- a folder path: a sentence-embedding model loaded with transformers from that folder (never downloaded),
  mean-pooled over tokens.

``"auto"`` takes the backend's when it has one and the n-gram embedder otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import numbers
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from ttc.errors import BackendError, ConfigError

FloatArray = npt.NDArray[np.float64]


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to vectors, one row per text."""

    def embed(self, texts: Sequence[str]) -> FloatArray: ...


class HashedNgramEmbedder:
    """Character n-grams hashed into ``dim`` signed buckets, L2-normalised (the feature-hashing trick).

    blake2b rather than ``hash()`` keeps vectors identical across processes and runs, so ETS's clusters, and
    with them the trace, depend on the seed alone.
    """

    def __init__(self, dim: int = 512, sizes: Sequence[int] = (2, 3, 4)) -> None:
        if dim < 8 or not sizes or min(sizes) < 1:
            raise ConfigError("HashedNgramEmbedder needs dim >= 8 and n-gram sizes >= 1")
        self.dim = dim
        self.sizes = tuple(sizes)

    def embed(self, texts: Sequence[str]) -> FloatArray:
        out = np.zeros((len(texts), self.dim))
        for row, text in enumerate(texts):
            if not text.strip():
                continue  # an empty step has no features: a zero vector, apart from everything
            norm = " " + re.sub(r"\s+", " ", text.lower()).strip() + " "
            for n in self.sizes:
                for start in range(max(0, len(norm) - n + 1)):
                    digest = hashlib.blake2b(norm[start : start + n].encode(), digest_size=8).digest()
                    value = int.from_bytes(digest, "little")
                    out[row, value % self.dim] += 1.0 if value >> 63 else -1.0
        return _normalised(out)


class TransformerEmbedder:
    """A sentence-embedding model from a local folder (config, weights, tokenizer), mean-pooled and normalised.

    The model is loaded when the embedder is made, so a folder that holds no model fails before a search spends
    anything, and it is shared by every embedder of the same folder.
    """

    def __init__(self, path: str | Path, *, max_length: int = 256) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise ConfigError(f"embedding model folder {str(self.path)!r} does not exist: pass a local folder "
                              "holding a transformers model and tokenizer, or use embedder='ngram'")
        self.max_length = max_length
        _load_model(str(self.path.resolve()))

    def embed(self, texts: Sequence[str]) -> FloatArray:
        if not texts:
            return np.zeros((0, 0))
        import torch

        tokenizer, model = _load_model(str(self.path.resolve()))
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                          return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return _normalised(pooled.double().numpy())


@functools.lru_cache(maxsize=4)
def _load_model(path: str) -> tuple[Any, Any]:
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ConfigError("a folder embedder needs transformers and torch: pip install 'ttc-engine[local]'") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load an embedding model from {path!r}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    return tokenizer, model


class BackendEmbedder:
    """The backend's hidden-state embeddings of whole token sequences (prompt and path down to the step).

    Expects ``backend.embed(list_of_token_id_lists)`` returning one row per sequence, sync or async.
    """

    def __init__(self, backend: object) -> None:
        if not hasattr(backend, "embed"):
            raise ConfigError(f"backend {getattr(backend, 'name', backend)!r} cannot embed: use embedder='ngram' "
                              "or a local embedding model folder")
        self.backend = backend

    async def embed_tokens(self, sequences: Sequence[Sequence[int]]) -> FloatArray:
        result = self.backend.embed([list(s) for s in sequences])  # type: ignore[attr-defined]
        if inspect.isawaitable(result):
            result = await result
        name = getattr(self.backend, "name", type(self.backend).__name__)
        problem = _vector_problem(result, len(sequences), "sequences")
        if problem is not None:
            raise BackendError(f"backend {name!r} returned embeddings that are {problem}; fix its embed() or use "
                               "embedder='ngram'", kind=str(name))
        return _normalised(np.asarray(result, dtype=np.float64))


AnyEmbedder = Embedder | BackendEmbedder


def resolve_embedder(name: str, backend: object) -> AnyEmbedder:
    """The embedder an ``embedder`` option names (see the module docstring)."""
    if name == "auto":
        return BackendEmbedder(backend) if hasattr(backend, "embed") else HashedNgramEmbedder()
    if name == "ngram":
        return HashedNgramEmbedder()
    if name == "backend":
        return BackendEmbedder(backend)
    return TransformerEmbedder(name)


NGRAM_THRESHOLD = 0.5
"""Surface n-grams: steps that share most of their characters are one cluster."""

HIDDEN_STATE_THRESHOLD = 0.1
"""A model's last hidden state after a step is what it will continue from, so two steps that leave the same
state (``22 + 12 = 34`` and ``32 + 12 = 34``) are at distance ~0. Steps with different results are often 0.2 to
0.5 apart on the mini models (``13 - 6 = 7`` against ``= 6``: 0.40), but not always: ``22 + 12 = 34`` against
``= 35`` is 0.0002 apart, so at this threshold a right step and a miscomputed one can share a cluster. N-grams
at 0.5 would lump far more together, since such steps share most characters."""


def default_threshold(embedder: AnyEmbedder) -> float:
    """The cosine distance that separates clusters when the ``cluster_threshold`` option is not set."""
    return HIDDEN_STATE_THRESHOLD if isinstance(embedder, BackendEmbedder) else NGRAM_THRESHOLD


async def embed_steps(embedder: AnyEmbedder, texts: Sequence[str],
                      sequences: Sequence[Sequence[int]]) -> FloatArray:
    """Embed steps by text, or by token sequence for the backend's embedder."""
    if isinstance(embedder, BackendEmbedder):
        return await embedder.embed_tokens(sequences)
    # A model embedder computes on the CPU for a while: off the event loop, so other searches keep going.
    vectors = await anyio.to_thread.run_sync(embedder.embed, list(texts))
    problem = _vector_problem(vectors, len(texts), "texts")
    if problem is not None:
        raise ConfigError(f"embedder {type(embedder).__name__} returned vectors that are {problem}; use "
                          "embedder='ngram' or another embedding model")
    return vectors


SAME_DIRECTION = 1e-12
"""Cosine distance below which two steps point the same way: float rounding leaves identical steps 1e-16 apart."""


def cluster(vectors: FloatArray, *, threshold: float | None = None, n_clusters: int | None = None) -> list[int]:
    """Average-linkage agglomerative clusters under cosine distance; labels 0.. in order of first appearance.

    ``n_clusters`` asks for at most that many clusters; otherwise merging stops at cosine distance ``threshold``.
    Zero vectors (empty steps) are at distance 1 from everything.
    """
    count = len(vectors)
    if count == 0:
        return []
    if count == 1:
        return [0]
    if n_clusters is None and threshold is None:
        raise ConfigError("cluster needs a distance threshold or a number of clusters")
    if n_clusters is not None and (not isinstance(n_clusters, numbers.Integral) or isinstance(n_clusters, bool)
                                   or n_clusters < 1):  # a numpy integer is one too
        raise ConfigError(f"n_clusters must be an int >= 1, got {n_clusters!r}")
    # Imported here: scipy's clustering takes a second to import, and only ETS needs it.
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import squareform

    problem = _vector_problem(vectors, count, "vectors")
    if problem is not None:
        raise ConfigError(f"cluster needs one finite vector per row, got vectors that are {problem}")
    unit = _normalised(np.asarray(vectors, dtype=np.float64))
    distance = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    # Steps closer than rounding are one direction, at distance exactly 0 (identical steps came out 2e-16 apart,
    # while two different ones clipped to 0): they merge first, and no cut separates them.
    same = distance <= SAME_DIRECTION
    distance[same] = 0.0
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    if n_clusters is not None:
        # Never more clusters than there are different directions: asked for as many as there are steps, maxclust
        # gives each its own, and identical steps would count as different paths.
        directions, _ = connected_components(same, directed=False)
        raw = fcluster(tree, t=min(n_clusters, directions), criterion="maxclust")
    else:
        raw = fcluster(tree, t=threshold, criterion="distance")
    relabel: dict[int, int] = {}
    return [relabel.setdefault(int(label), len(relabel)) for label in raw]


def _vector_problem(raw: object, rows: int, of: str) -> str | None:
    """What is wrong with ``raw`` as a matrix of one finite vector per row (``rows`` of them), or None."""
    try:
        matrix = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return f"not a matrix of numbers ({exc})"
    if matrix.ndim != 2:
        return f"not a matrix (shape {matrix.shape})"
    if matrix.shape[0] != rows:
        return f"{matrix.shape[0]} rows for {rows} {of}"
    if not np.isfinite(matrix).all():
        bad = sorted({int(row) for row in np.nonzero(~np.isfinite(matrix))[0]})
        return f"not finite (NaN or infinity in rows {bad[:10]})"
    return None


def _normalised(matrix: FloatArray) -> FloatArray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: FloatArray = np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)
    return out


__all__ = ["HIDDEN_STATE_THRESHOLD", "NGRAM_THRESHOLD", "AnyEmbedder", "BackendEmbedder", "Embedder",
           "HashedNgramEmbedder", "TransformerEmbedder", "cluster", "default_threshold", "embed_steps",
           "resolve_embedder"]
