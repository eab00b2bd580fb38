"""ETS as a search: the program's choice drives pruning, reasons and events; it reduces to REBASE at zero weights."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from tree_doubles import HashPRM, TablePRM, prefix_of, random_responder, round_events, run_search, tree_responder

import ttc
from ttc.errors import ConfigError
from ttc.storage import TraceStore
from ttc.strategies.base import make_strategy
from ttc.strategies.ets import EtsOptions
from ttc.testing import ScriptedBackend
from ttc.types import Budget

pytestmark = pytest.mark.anyio

A, B, C = "x = 1 + 2\n", "x = 2 + 1\n", "the area of a circle is pi r2\n"  # 10, 10 and 30 tokens
SCRIPT = {"": [A, B, C, "The answer is 3.\n"]}
SCORES = {"x = 1 + 2": 0.8, "x = 2 + 1": 0.75, "the area of a circle is pi r2": 0.6}
OPTIONS = {"width": 4, "balance_temperature": 0.2, "lambda_kv": 2.5, "lambda_coverage": 1.0, "n_clusters": 2}


async def test_the_program_keeps_one_of_two_near_duplicates_and_drops_the_dear_cousin() -> None:
    backend = ScriptedBackend(tree_responder(SCRIPT))
    result, ctx, _ = await run_search("ets", OPTIONS, backend, TablePRM(SCORES))
    node = {n.text: n for n in ctx.recorder.nodes()}
    event = round_events(ctx)[0]
    assert event["clusters"] == {str(node[A].id): 0, str(node[B].id): 0, str(node[C].id): 1}
    assert event["kept"] == [node[A].id]
    assert sorted(event["pruned"]) == sorted([node[B].id, node[C].id])  # type: ignore[arg-type]
    assert node[B].reason == "ilp: redundant cluster"
    assert node[C].reason == "ilp: kv cost"
    assert event["allocation"] == {str(node[A].id): 3}
    # Worked by hand: A keeps its softmax weight, pays 2.5 x 10/50 of the tree's tokens, covers 1 of 2 clusters.
    weight_a = 1 / (1 + math.exp(-0.05 / 0.2) + math.exp(-0.2 / 0.2))
    assert event["objective"] == pytest.approx(weight_a - 2.5 * 10 / 50 + 0.5)
    assert event["ilp_status"] == "optimal"
    assert prefix_of(B) in backend.released and prefix_of(C) in backend.released
    assert [(call.prompt, call.n) for call in backend.calls] == [(prefix_of(), 4), (prefix_of(A), 3)]
    assert len(result.candidates) == 4
    json.dumps([dict(e.payload) for e in ctx.recorder.events()])


async def test_cheap_kv_keeps_both_clusters() -> None:
    backend = ScriptedBackend(tree_responder(SCRIPT))
    _, ctx, _ = await run_search("ets", {**OPTIONS, "lambda_kv": 0.1}, backend, TablePRM(SCORES))
    assert len(round_events(ctx)[0]["kept"]) == 3  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 3])
async def test_zero_weights_make_ets_rebase(seed: int) -> None:
    rebase_backend, ets_backend = ScriptedBackend(random_responder), ScriptedBackend(random_responder)
    rebase, _, _ = await run_search("rebase", {"width": 6}, rebase_backend, HashPRM(), seed=seed)
    ets, ctx, _ = await run_search("ets", {"width": 6, "lambda_kv": 0.0, "lambda_coverage": 0.0}, ets_backend,
                                   HashPRM(), seed=seed)
    assert ets_backend.calls == rebase_backend.calls
    assert [c.text for c in ets.candidates] == [c.text for c in rebase.candidates]
    assert all(not n.reason or not n.reason.startswith("ilp") for n in ctx.recorder.nodes())


async def test_zero_weights_keep_every_node_when_fewer_children_are_owed_than_nodes() -> None:
    """Owed 2 children (a narrowed width) among 3 nodes weighted 0.6/0.2/0.2, the program kept the best and one
    tie its own way, and the share-out then gave the best both: REBASE gives one each to the best and the first
    tie. Its prune reason named a KV cost weighted 0."""
    import types

    from ttc.strategies.ets import Ets
    from ttc.strategies.ets_ilp import softmax
    from ttc.strategies.rebase import apportion
    from ttc.strategies.tree import StepNode

    root = StepNode(id=0, parent=None, prefix=(1, 2), token_ids=(1, 2), text="q", depth=0)
    scores = [0.0, -0.2 * math.log(3), -0.2 * math.log(3)]  # softmax weights 0.6, 0.2, 0.2 at temperature 0.2
    nodes = [StepNode(id=i + 1, parent=root, prefix=(1, 2, 3 + i), token_ids=(3 + i,), text=text, depth=1,
                      score=score) for i, (score, text) in enumerate(zip(scores, ["a b c", "x y z", "p q r"],
                                                                        strict=True))]
    tree = types.SimpleNamespace(ctx=types.SimpleNamespace(backend=object()))
    ets = Ets(EtsOptions(lambda_kv=0, lambda_coverage=0, embedder="ngram", width=4, balance_temperature=0.2))
    retained = await ets.retain(tree, nodes, 2)  # type: ignore[arg-type]
    assert [n.id for n in retained.nodes] == [1, 2, 3] and not retained.dropped
    shares = apportion(retained.nodes, softmax([n.score for n in retained.nodes], 0.2), 2)
    assert shares == apportion(nodes, softmax(scores, 0.2), 2) == {1: 1, 2: 1, 3: 0}
    capped = Ets(EtsOptions(lambda_kv=0, lambda_coverage=1, n_clusters=3, embedder="ngram", width=4,
                            balance_temperature=0.2))
    dropped = await capped.retain(tree, nodes, 2)  # type: ignore[arg-type]
    assert set(dropped.reasons.values()) == {"ilp: not among the 2 nodes the width keeps"}


async def test_a_node_its_kv_cost_drops_is_not_blamed_on_the_width() -> None:
    """Two cheap siblings fill a width of 2 and a cousin behind a 60-token step is dropped: the program drops it at
    any width, so its reason is its KV cost, not the width."""
    import types

    from ttc.strategies.ets import Ets
    from ttc.strategies.tree import StepNode

    root = StepNode(id=0, parent=None, prefix=(1,), token_ids=(1,), text="q", depth=0)
    far = StepNode(id=4, parent=root, prefix=(1, *range(100, 160)), token_ids=tuple(range(100, 160)), text="far",
                   depth=1, score=0.5)
    nodes = [StepNode(id=1, parent=root, prefix=(1, 2), token_ids=(2,), text="a b", depth=1, score=0.5),
             StepNode(id=2, parent=root, prefix=(1, 3), token_ids=(3,), text="c d", depth=1, score=0.5),
             StepNode(id=3, parent=far, prefix=(*far.prefix, 5), token_ids=(5,), text="e f", depth=2, score=0.5)]
    tree = types.SimpleNamespace(ctx=types.SimpleNamespace(backend=object()))
    ets = Ets(EtsOptions(lambda_kv=5.0, lambda_coverage=0.0, embedder="ngram", width=4))
    for owed in (2, 3):
        retained = await ets.retain(tree, nodes, owed)  # type: ignore[arg-type]
        assert [n.id for n in retained.nodes] == [1, 2] and retained.reasons == {3: "ilp: kv cost"}, owed


class EmbeddingBackend(ScriptedBackend):
    """A backend that embeds sequences (as the local engine may): steps starting with 'x' point one way."""

    def __init__(self, *args: object, asynchronous: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.embedded: list[list[list[int]]] = []
        self.asynchronous = asynchronous

    def _vectors(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        self.embedded.append([list(s) for s in sequences])
        last_steps = ["".join(map(chr, s)).rstrip("\n").rsplit("\n", 1)[-1] for s in sequences]
        return [[1.0, 0.0] if step.startswith("x") else [0.0, 1.0] for step in last_steps]

    def embed(self, sequences: Sequence[Sequence[int]]) -> object:
        if self.asynchronous:
            async def later() -> list[list[float]]:
                return self._vectors(sequences)
            return later()
        return self._vectors(sequences)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_backend_that_embeds_is_used_by_default(asynchronous: bool) -> None:
    backend = EmbeddingBackend(tree_responder(SCRIPT), asynchronous=asynchronous)
    options = {k: v for k, v in OPTIONS.items() if k != "n_clusters"}
    _, ctx, _ = await run_search("ets", options, backend, TablePRM(SCORES))
    assert sorted(map(tuple, backend.embedded[0])) == sorted([prefix_of(A), prefix_of(B), prefix_of(C)])
    event = round_events(ctx)[0]
    assert sorted(event["clusters"].values()) == [0, 0, 1]  # type: ignore[attr-defined]
    assert len(event["kept"]) == 1  # type: ignore[arg-type]


async def test_each_embedding_request_is_a_backend_call_the_budget_counts() -> None:
    """The backend's embeddings went uncounted: 30 calls charged where the backend served 33 requests."""
    backend = EmbeddingBackend(random_responder)
    options = {k: v for k, v in OPTIONS.items() if k != "n_clusters"}
    _, _, meter = await run_search("ets", {**options, "width": 6}, backend, HashPRM(), budget=Budget(calls=7))
    assert backend.embedded and len(backend.calls) + len(backend.embedded) == meter.usage().backend_calls <= 7


async def test_the_last_call_goes_to_an_expansion_not_to_embeddings() -> None:
    """With one call left the backend's embeddings took it, and the expansion they chose for never ran."""
    backend = EmbeddingBackend(random_responder)
    options = {k: v for k, v in OPTIONS.items() if k != "n_clusters"}
    _, ctx, meter = await run_search("ets", {**options, "width": 6}, backend, HashPRM(), budget=Budget(calls=2))
    assert not backend.embedded and len(backend.calls) == meter.usage().backend_calls == 2
    assert round_events(ctx)[0]["embedder"] == "ngram: no call left to spare for the backend's"


async def test_a_missing_embedding_model_fails_before_spending() -> None:
    backend = ScriptedBackend(random_responder)
    with pytest.raises(ConfigError, match="does not exist"):
        await run_search("ets", {"embedder": "/nonexistent/embedding-model"}, backend, HashPRM())
    assert backend.calls == []


def test_a_missing_embedding_model_fails_before_any_trace_opens(tmp_path: Path) -> None:
    """A batch failed once, before its questions' traces opened (each was left ``failed`` with the error)."""
    db = tmp_path / "traces.db"
    for name in ("/nonexistent/embedding-model", "backend"):  # no folder; a backend that cannot embed
        for scope in ("question", "batch"):
            with pytest.raises(ConfigError, match=r"does not exist|cannot embed"):
                ttc.solve_batch(["1 + 2?", "2 + 3?"], 512, strategy="ets", embedder=name, store=str(db),
                                backend=ScriptedBackend(random_responder), verifier=HashPRM(), concurrency=2,
                                budget_scope=scope)  # type: ignore[arg-type]
    with TraceStore(str(db)) as store:
        assert store.list_traces() == []


def test_weights_past_the_programs_range_are_refused() -> None:
    """Past about 1e20 HiGHS reads the costs as infinite and ETS quietly kept a fallback leaf every round."""
    for name in ("lambda_kv", "lambda_coverage"):
        with pytest.raises(ConfigError, match=name):
            make_strategy("ets", {name: 1e21})
    assert make_strategy("ets", {"lambda_kv": 1e6}).options.lambda_kv == 1e6  # type: ignore[attr-defined]


def test_options_are_registered_and_checked() -> None:
    strategy = make_strategy("ets", {"width": 8, "lambda_kv": 0.5, "kv_cost": "nodes"})
    assert isinstance(strategy.options, EtsOptions) and strategy.options.lambda_kv == 0.5
    with pytest.raises(ConfigError, match="lambda_kb"):
        make_strategy("ets", {"lambda_kb": 1.0})
    with pytest.raises(ConfigError, match="lambda_kv"):
        make_strategy("ets", {"lambda_kv": -1.0})
