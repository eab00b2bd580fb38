"""The KV block tree on its own: sharing, splitting, reference counts, radix lookup and LRU eviction."""

from __future__ import annotations

import pytest
import torch

from ttc.engine.kv_tree import KVBlock, KVTree


def _tree(cache_tokens: int = 1000, share: bool = True) -> KVTree:
    return KVTree(num_layers=2, kv_heads=1, head_dim=2, device=torch.device("cpu"), dtype=torch.float32,
                  cache_tokens=cache_tokens, share=share)


def _kv(tree: KVTree, tokens: list[int]) -> torch.Tensor:
    """Storage whose every entry equals its token id, so copies and splits can be checked by value."""
    storage = tree.allocate(len(tokens))
    for i, t in enumerate(tokens):
        storage[:, :, i] = float(t)
    return storage


def _insert(tree: KVTree, tokens: list[int]) -> KVBlock:
    parent, matched = tree.lookup(tokens)
    block = tree.add(parent, tokens[matched:], _kv(tree, tokens[matched:])) if matched < len(tokens) else parent
    tree.check()
    return block


def _decode(tree: KVTree, block: KVBlock, tokens: list[int]) -> None:
    for t in tokens:
        offset = tree.append(block, t)
        assert block.storage is not None
        block.storage[:, :, offset] = float(t)
    tree.check()


def _path_tokens(block: KVBlock) -> list[int]:
    return [t for b in block.path() for t in b.tokens]


def _path_values(block: KVBlock) -> list[int]:
    return [int(v) for b in block.path() for v in b.keys(0)[:, 0, 0].tolist()]


def test_forked_branches_share_the_prompt_blocks() -> None:
    tree = _tree()
    prompt = _insert(tree, list(range(100)))
    branches = [tree.branch(prompt, 8) for _ in range(4)]
    for i, b in enumerate(branches):
        tree.acquire(b)
        _decode(tree, b, [1000 + i, 2000 + i, 3000 + i])
    assert tree.live_tokens == 100 + 4 * 3
    assert tree.peak_live_tokens == 112
    assert prompt.refs == 4
    assert all(_path_tokens(b)[:100] == list(range(100)) for b in branches)
    assert tree.bytes_per_token == 2 * 2 * 1 * 2 * 4


def test_release_frees_only_private_blocks() -> None:
    tree = _tree()
    prompt = _insert(tree, list(range(50)))
    a, b = tree.branch(prompt, 4), tree.branch(prompt, 4)
    for block, token in ((a, 7), (b, 8)):
        tree.acquire(block)
        _decode(tree, block, [token, token])
    tree.release(tree.seal(a))
    tree.check()
    assert tree.live_tokens == 50 + 2
    assert tree.cached_tokens == 2
    assert prompt.refs == 1
    tree.release(tree.seal(b))
    tree.check()
    assert tree.live_tokens == 0
    assert tree.cached_tokens == 54
    assert tree.peak_live_tokens == 54


def test_an_over_release_changes_no_count() -> None:
    """release() decremented the shared prompt before it found the branch unheld, leaving the prompt one holder
    short while its sibling still read it."""
    tree = _tree()
    prompt = _insert(tree, list(range(50)))
    a, b = tree.branch(prompt, 4), tree.branch(prompt, 4)
    tree.acquire(a)
    _decode(tree, a, [7, 7])
    tree.release(tree.seal(a))
    tree.acquire(b)
    _decode(tree, b, [8])
    before = (prompt.refs, tree.live_tokens, tree.cached_tokens)
    with pytest.raises(ValueError, match="released more often than acquired"):
        tree.release(a)
    assert (prompt.refs, tree.live_tokens, tree.cached_tokens) == before == (1, 51, 2)
    tree.check()


def test_radix_lookup_finds_a_resubmitted_prefix_and_splits_inside_blocks() -> None:
    tree = _tree()
    _insert(tree, [1, 2, 3, 4, 5, 6])
    block, matched = tree.match([1, 2, 3, 4, 5, 6, 7])
    assert matched == 6 and block.tokens == [1, 2, 3, 4, 5, 6]
    other = _insert(tree, [1, 2, 3, 9, 9])  # diverges inside the first block: it is split at 3
    assert _path_tokens(other) == [1, 2, 3, 9, 9]
    assert _path_values(other) == [1, 2, 3, 9, 9]
    head, matched = tree.match([1, 2, 3])
    assert matched == 3 and head.tokens == [1, 2, 3] and len(head.children) == 2
    tail, matched = tree.match([1, 2, 3, 4, 5, 6])
    assert matched == 6 and tail.tokens == [4, 5, 6] and _path_values(tail) == [1, 2, 3, 4, 5, 6]
    assert tree.cached_tokens == 8


def test_split_keeps_holders_and_positions() -> None:
    tree = _tree()
    block = _insert(tree, list(range(10)))
    tree.acquire(block)
    head = tree.split(block, 4)
    tree.check()
    assert (head.start, head.length, head.refs) == (0, 4, 1)
    assert (block.start, block.length, block.refs) == (4, 6, 1)
    assert block.parent is head and tree.live_tokens == 10


def test_open_block_is_split_at_its_end_so_new_children_never_move() -> None:
    tree = _tree()
    prompt = _insert(tree, [5, 5, 5])
    decoding = tree.branch(prompt, 4)
    tree.acquire(decoding)
    _decode(tree, decoding, [1, 2])
    # A new request whose prompt is exactly what has been decoded so far.
    parent, matched = tree.lookup([5, 5, 5, 1, 2])
    assert matched == 5 and not parent.open and parent.tokens == [1, 2]
    assert decoding.open and decoding.length == 0 and decoding.parent is parent
    _decode(tree, decoding, [3])
    tree.check()
    assert _path_tokens(decoding) == [5, 5, 5, 1, 2, 3]
    assert _path_values(decoding) == [5, 5, 5, 1, 2, 3]


def test_sealing_an_empty_branch_moves_its_hold_to_the_parent() -> None:
    tree = _tree()
    prompt = _insert(tree, [1, 2, 3])
    branch = tree.branch(prompt, 4)
    tree.acquire(branch)
    ended = tree.seal(branch)
    assert ended is prompt and ended.refs == 1 and branch.id not in tree.blocks
    tree.check()
    tree.release(ended)
    assert tree.live_tokens == 0


def test_cache_evicts_least_recently_used_unreferenced_leaves() -> None:
    tree = _tree(cache_tokens=10)
    first = _insert(tree, [1] * 6)
    second = _insert(tree, [2] * 6)  # 12 cached tokens > 10, but eviction only runs on release/trim
    tree.acquire(second)
    tree.release(second)
    tree.check()
    assert first.id not in tree.blocks and second.id in tree.blocks
    assert tree.cached_tokens == 6
    assert tree.match([1] * 6)[1] == 0


def test_held_blocks_are_never_evicted() -> None:
    tree = _tree(cache_tokens=0)
    held = _insert(tree, [3] * 5)
    tree.acquire(held)
    tree.trim()
    assert held.id in tree.blocks and tree.live_tokens == 5


def test_unshared_tree_copies_paths_and_frees_at_once() -> None:
    tree = _tree(share=False)
    prompt = _insert(tree, list(range(20)))
    copies = [tree.copy_path(prompt, 24) for _ in range(3)]
    for c in copies:
        tree.acquire(c)
    tree.trim()
    tree.check()
    assert prompt.id not in tree.blocks
    assert tree.live_tokens == 60 and tree.match(list(range(20)))[1] == 0
    assert all(_path_values(c) == list(range(20)) for c in copies)
    for c in copies:
        tree.release(tree.seal(c))
    assert tree.live_tokens == 0 and tree.cached_tokens == 0 and not tree.blocks


def test_appends_grow_storage_without_losing_kv() -> None:
    tree = _tree()
    root_block = _insert(tree, [0])
    branch = tree.branch(root_block, 1)
    tree.acquire(branch)
    _decode(tree, branch, list(range(1, 40)))
    assert _path_values(branch) == list(range(40))
    assert branch.capacity >= 39


def test_lookup_finds_the_longest_prefix_when_sibling_branches_share_a_first_token() -> None:
    # Two branches of one prompt decode the same first tokens at different speeds: siblings under one token.
    tree = _tree()
    prompt = _insert(tree, [7, 7])
    slow, fast = tree.branch(prompt, 8), tree.branch(prompt, 8)
    for block in (slow, fast):
        tree.acquire(block)
    _decode(tree, slow, [1])
    _decode(tree, fast, [1, 2])
    # A request extends what the fast branch has written so far: [1, 2] is closed, and [3, 4, 5] cached under it.
    head, matched = tree.lookup([7, 7, 1, 2])
    assert matched == 4 and head.tokens == [1, 2]
    _insert(tree, [7, 7, 1, 2, 3, 4, 5])
    _decode(tree, slow, [2, 3, 9])
    # The slow branch now shares 3 tokens with the request at that level and stops there; the longest cached
    # prefix runs through the fast branch's head to all 7 tokens.
    block, matched = tree.match([7, 7, 1, 2, 3, 4, 5, 6])
    assert matched == 7 and _path_tokens(block) == [7, 7, 1, 2, 3, 4, 5]
    end, found = tree.lookup([7, 7, 1, 2, 3, 4, 5])
    assert found == 7 and _path_values(end) == [7, 7, 1, 2, 3, 4, 5]


def _held_bytes(tree: KVTree) -> int:
    """Bytes of storage the tree's blocks keep alive, each underlying allocation once (views share one)."""
    seen: dict[int, int] = {}
    for block in tree.blocks.values():
        if block.storage is not None:
            storage = block.storage.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def test_a_sealed_block_keeps_only_the_storage_its_tokens_use() -> None:
    """Growth doubled a step's storage (128 slots for a 5-token step) and sealing kept it: a cache capped at 2000
    tokens held 8.7 times that in KV memory."""
    tree = _tree()
    per_token = 2 * 2 * 1 * 2 * 4  # layers, K and V, heads, head_dim, float32
    prompt = _insert(tree, [7] * 4)
    for step in range(20):
        branch = tree.branch(prompt, 128)
        tree.acquire(branch)
        _decode(tree, branch, [step + 10] * 5)
        sealed = tree.seal(branch)
        assert sealed.capacity == 5 and _path_values(sealed) == [7] * 4 + [step + 10] * 5
        tree.release(sealed)
    tree.check()
    assert _held_bytes(tree) == (4 + 20 * 5) * per_token


def test_a_split_head_does_not_keep_its_evicted_tail_s_storage() -> None:
    tree = _tree(cache_tokens=1000)
    block = _insert(tree, list(range(100)))
    head = tree.split(block, 4)
    assert _path_values(block) == list(range(100)) and head.keys(0).shape[0] == 4
    tree.cache_tokens = 4  # only the head fits: the tail is evicted
    tree.trim()
    tree.check()
    assert block.id not in tree.blocks and head.id in tree.blocks
    assert _held_bytes(tree) == 4 * 2 * 2 * 1 * 2 * 4


def test_a_split_leaves_no_block_viewing_more_than_its_tokens() -> None:
    """A closed tail kept viewing the whole buffer its head was cut from: ten 64-token prompts found again to 63
    tokens held 1270 tokens' KV for 640 cached, and reserved_bytes said 640."""
    tree = _tree()
    per_token = 2 * 2 * 1 * 2 * 4
    for k in range(10):
        tokens = [k * 100 + i for i in range(64)]
        _insert(tree, tokens)
        tree.lookup(tokens[:63])
    tree.check()
    assert tree.cached_tokens == 640
    assert _held_bytes(tree) == tree.reserved_bytes == 640 * per_token
    # An open block split at its end keeps appending into its buffer; sealed, it holds its own tokens only.
    prompt = _insert(tree, [5] * 8)
    branch = tree.branch(prompt, 6)
    tree.acquire(branch)
    _decode(tree, branch, [1, 2, 3])
    tree.lookup([5] * 8 + [1, 2])
    _decode(tree, branch, [4, 5, 6])
    sealed = tree.seal(branch)
    assert _path_values(sealed) == [5] * 8 + [1, 2, 3, 4, 5, 6]
    tree.release(sealed)
    tree.check()
    assert _held_bytes(tree) == tree.reserved_bytes == (640 + 8 + 6) * per_token
