"""The router's approximate radix tree: per-worker matches, forgetting, and its memory bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_router.approx_tree import ApproxRadixTree, _Node


def test_match_reports_each_workers_longest_prefix():
    tree = ApproxRadixTree(max_tokens=1000)
    tree.insert([1, 2, 3, 4, 5, 6], "w1", now=1.0)
    tree.insert([1, 2, 3, 9, 9], "w2", now=2.0)

    matches = tree.match([1, 2, 3, 4, 5, 7])

    assert {w: m.tokens for w, m in matches.items()} == {"w1": 5, "w2": 3}
    assert matches["w2"].last_access == 2.0


def test_a_prompt_nobody_routed_matches_no_worker():
    tree = ApproxRadixTree(max_tokens=1000)
    tree.insert([1, 2, 3], "w1")

    assert tree.match([7, 8, 9]) == {}


def test_forget_keeps_the_head_a_worker_still_holds():
    tree = ApproxRadixTree(max_tokens=1000)
    tree.insert([1, 2, 3, 4, 5, 6, 7, 8], "w1")
    tree.insert([1, 2, 3, 4, 5, 6, 7, 8], "w2")

    tree.forget([1, 2, 3, 4, 5, 6, 7, 8], "w1", keep_tokens=3)

    matches = tree.match([1, 2, 3, 4, 5, 6, 7, 8])
    assert matches["w1"].tokens == 3 and matches["w2"].tokens == 8
    assert tree.worker_tokens("w1") == 3 and tree.worker_tokens("w2") == 8


def test_removing_a_worker_drops_prefixes_only_it_held():
    tree = ApproxRadixTree(max_tokens=1000)
    tree.insert([1, 2, 3, 4], "w1")
    tree.insert([1, 2, 5, 6], "w2")

    tree.remove_worker("w1")

    assert tree.match([1, 2, 3, 4]) == {"w2": tree.match([1, 2])["w2"]}
    assert tree.total_tokens == 4 and tree.worker_tokens("w1") == 0


def test_eviction_keeps_the_bound_and_drops_least_recently_used_first():
    tree = ApproxRadixTree(max_tokens=20)
    tree.insert(list(range(100, 110)), "w1", now=1.0)  # oldest
    tree.insert(list(range(200, 210)), "w1", now=2.0)
    tree.insert(list(range(300, 310)), "w2", now=3.0)  # over the bound: evicts

    assert tree.total_tokens <= 20
    assert tree.match(list(range(100, 110))) == {}
    assert tree.match(list(range(300, 310)))["w2"].tokens == 10


def _check_invariants(tree: ApproxRadixTree) -> None:
    total, per_worker = 0, {}
    stack: list[_Node] = list(tree._root.children.values())
    while stack:
        node = stack.pop()
        assert node.workers, "a node nobody holds must have been removed"
        assert node.parent is not None
        if node.parent is not tree._root:
            # closure: whoever holds a node holds its parent
            assert set(node.workers) <= set(node.parent.workers)
        total += len(node.key)
        for w in node.workers:
            per_worker[w] = per_worker.get(w, 0) + len(node.key)
        stack.extend(node.children.values())
    assert total == tree.total_tokens
    assert per_worker == {w: tree.worker_tokens(w) for w in per_worker}


prompts = st.lists(st.integers(0, 3), min_size=1, max_size=12)
operations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "forget", "remove"]), prompts, st.sampled_from("abc"), st.integers(0, 12)
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_random_operations_keep_closure_counts_and_bound(ops):
    tree = ApproxRadixTree(max_tokens=40)
    for step, (op, tokens, worker, keep) in enumerate(ops):
        if op == "insert":
            tree.insert(tokens, worker, now=float(step))
            assert tree.match(tokens)[worker].tokens == len(tokens)
        elif op == "forget":
            tree.forget(tokens, worker, keep)
            assert tree.match(tokens).get(worker) is None or tree.match(tokens)[worker].tokens <= keep
        else:
            tree.remove_worker(worker)
        _check_invariants(tree)
        assert tree.total_tokens <= 40
