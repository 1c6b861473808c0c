import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from radixfair_engine.kernels import prefix_groups  # noqa: E402
from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.cascade_decode_attention import (  # noqa: E402
    cascade_decode_attention,
    choose_prefix_splits,
)
from radixfair_engine.kernels.paged_fixtures import random_shared_prefix_context  # noqa: E402
from radixfair_engine.kernels.prefix_groups import PrefixSharingConfig, find_prefix_groups  # noqa: E402
from radixfair_engine.kernels.reference import (  # noqa: E402
    cascade_decode_reference,
    paged_attention_reference,
    reference_rows,
)

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE_SIZE = 6, 2, 16, 4  # 3 query heads per KV head: not a power of two
BLOCK_M = 16  # 5 sequences per shared-part program, so a group of 7 is two ragged items
EVERY_GROUP = PrefixSharingConfig(min_saved_tokens=1, block_m=BLOCK_M)

# Group 0: 4 sequences sharing 13 tokens (3 whole pages; the prefix ends mid-page), ragged own parts.
# Group 1: 7 sequences sharing 8 tokens (two items of 5 and 2). Group 2: a group of one (not grouped).
# Then two sequences in no group and a padding row of length 0.
SEQ_LENS = [14, 20, 31, 17] + [9, 12, 10, 25, 9, 16, 11] + [30] + [6, 22, 0]
GROUP_OF = [0] * 4 + [1] * 7 + [2] + [-1, -1, -1]
SHARED_TOKENS = [13, 8, 24]


def shared_batch(dtype: torch.dtype):  # type: ignore[no-untyped-def]
    ctx = random_shared_prefix_context(
        SEQ_LENS, GROUP_OF, SHARED_TOKENS, KV_HEADS, HEAD_DIM, PAGE_SIZE, dtype
    )
    host = find_prefix_groups(
        ctx.page_table.numpy(), np.array(SEQ_LENS), PAGE_SIZE, Q_HEADS // KV_HEADS, EVERY_GROUP
    )
    assert host is not None
    return ctx, host, torch.randn(len(SEQ_LENS), Q_HEADS, HEAD_DIM, dtype=dtype)


def plain_reference(q: torch.Tensor, ctx) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        list(range(len(SEQ_LENS) + 1)),
        SEQ_LENS,
        ctx.page_table,
        HEAD_DIM**-0.5,
    )


def test_groups_share_whole_pages_only_and_leave_groups_of_one_and_padding_alone() -> None:
    ctx, host, _ = shared_batch(torch.float32)

    shared = host.seq_prefix_len.tolist()

    assert shared == [12] * 4 + [8] * 7 + [0] + [0, 0, 0]
    assert sorted(host.item_member_count.tolist()) == [2, 4, 5]


@pytest.mark.parametrize(
    ("dtype", "num_splits", "prefix_splits", "concurrent"),
    [(torch.float32, 1, 1, False), (torch.bfloat16, 1, 4, False), (torch.float32, 2, 2, False)]
    + [(torch.float32, 1, 2, True), (torch.bfloat16, 2, 1, True)],
)
def test_cascade_matches_plain_attention_in_fp64(
    dtype: torch.dtype, num_splits: int, prefix_splits: int, concurrent: bool
) -> None:
    ctx, host, q = shared_batch(dtype)
    groups = host.to_device(lambda t: t, capacity=host.num_items + 2)  # two empty items, as in a graph
    out = poisoned_like(q)

    cascade_decode_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.page_table,
        ctx.seq_lens,
        groups,
        HEAD_DIM**-0.5,
        out=out,
        num_splits=num_splits,
        prefix_splits=prefix_splits,
        block_n=8,
        concurrent=concurrent,
    )

    assert relative_error(out, plain_reference(q, ctx)) < TOLERANCE[dtype]
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))  # the padding row


def test_the_torch_cascade_reference_is_plain_attention_when_pages_are_shared() -> None:
    ctx, host, q = shared_batch(torch.float64)
    seq_prefix_len, prefix_row = reference_rows(host.to_device(lambda t: t))

    out = cascade_decode_reference(
        q, ctx.k_cache, ctx.v_cache, ctx.page_table, SEQ_LENS, seq_prefix_len, prefix_row, HEAD_DIM**-0.5
    )

    # fp64 throughout: only rounding of O(ctx) terms separates the two orders of summation.
    assert relative_error(out, plain_reference(q, ctx)) < 1e-12


def test_small_groups_and_short_prefixes_fall_back_to_the_plain_kernel() -> None:
    ctx, _, _ = shared_batch(torch.float32)
    table, lens = ctx.page_table.numpy(), np.array(SEQ_LENS)

    # The best group saves (7 - 1) * 8 = 48 token reads (group 0: 3 * 12 = 36).
    assert find_prefix_groups(table, lens, PAGE_SIZE, 3, PrefixSharingConfig(min_saved_tokens=49)) is None
    assert find_prefix_groups(table, lens, PAGE_SIZE, 3, PrefixSharingConfig(min_group_size=8)) is None
    only_big = find_prefix_groups(
        table, lens, PAGE_SIZE, 3, PrefixSharingConfig(min_saved_tokens=40, block_m=BLOCK_M)
    )
    assert only_big is not None and only_big.seq_prefix_len.tolist() == [0] * 4 + [8] * 7 + [0] * 4
    assert find_prefix_groups(table, lens, PAGE_SIZE, 3, PrefixSharingConfig(enabled=False)) is None


def test_two_prefixes_behind_one_shared_first_page_are_two_groups() -> None:
    # Rows 0-2 share pages [7, 8, 9], rows 3-5 share [7, 5, 6]: only page 7 is common to all.
    table = np.array([[7, 8, 9, 10 + b] if b < 3 else [7, 5, 6, 10 + b] for b in range(6)])

    host = find_prefix_groups(table, np.array([16] * 6), 4, 3, PrefixSharingConfig(min_saved_tokens=1))

    assert host is not None
    assert host.seq_prefix_len.tolist() == [12] * 6
    assert sorted(host.item_member_count.tolist()) == [3, 3]
    assert sorted(host.members.tolist()) == list(range(6))


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    page_size=st.sampled_from([1, 4, 16]),
    block_m=st.sampled_from([4, 16, 64]),
)
def test_every_grouped_sequence_really_shares_its_items_pages(data, page_size: int, block_m: int) -> None:  # type: ignore[no-untyped-def]
    # Page tables built from a few random prefixes: rows copy a random-length head of one of them.
    heads = data.draw(st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=6), min_size=1, max_size=3))
    rows = data.draw(
        st.lists(st.tuples(st.integers(0, len(heads) - 1), st.integers(0, 6)), min_size=1, max_size=12)
    )
    tables, lens = [], []
    for b, (head, cut) in enumerate(rows):
        pages = heads[head][: min(cut, len(heads[head]))] + [100 + 10 * b + i for i in range(3)]
        tables.append(pages)
        lens.append(data.draw(st.integers(0, len(pages) * page_size)))
    width = max(map(len, tables))
    table = np.array([t + [0] * (width - len(t)) for t in tables])
    config = PrefixSharingConfig(min_saved_tokens=1, block_m=block_m)

    host = find_prefix_groups(table, np.array(lens), page_size, 2, config)

    if host is None:
        return
    per_item = max(1, block_m // 2)
    seen: list[int] = []
    for item in range(host.num_items):
        start, count = host.item_member_start[item], host.item_member_count[item]
        assert 1 <= count <= per_item
        pages = host.item_prefix_len[item] // page_size
        row = host.item_row[item]
        for member in host.members[start : start + count]:
            seen.append(int(member))
            assert host.seq_prefix_len[member] == host.item_prefix_len[item] == pages * page_size
            assert pages >= 1 and (table[member, :pages] == table[row, :pages]).all()
            # Never the page that holds the newest token.
            assert pages * page_size <= lens[member] - 1
    assert sorted(seen) == sorted(set(seen))  # nobody is in two items
    assert all(host.seq_prefix_len[b] == 0 for b in range(len(lens)) if b not in seen)


def test_prefix_splits_cover_the_sms_once_and_keep_a_tile_each() -> None:
    # 128 sequences, 3 query heads per KV head, 64 rows a program: 7 items x 3 KV heads = 21 programs.
    assert choose_prefix_splits(num_items=7, num_kv_heads=3, max_prefix_len=4096, num_sms=132) == 8
    assert choose_prefix_splits(num_items=7, num_kv_heads=3, max_prefix_len=256, num_sms=132) == 2
    assert choose_prefix_splits(num_items=100, num_kv_heads=3, max_prefix_len=4096, num_sms=132) == 1


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    page_size=st.sampled_from([1, 4]),
    min_saved=st.integers(1, 400),
    min_group_size=st.integers(2, 3),
    min_shared_pages=st.integers(1, 2),
)
def test_skipping_keys_and_anchors_that_cannot_pay_finds_the_groups_trying_every_anchor_finds(  # type: ignore[no-untyped-def]
    data, page_size: int, min_saved: int, min_group_size: int, min_shared_pages: int
) -> None:
    # Nested prefixes, as a radix cache hands them out: a row walks a random path in a small tree
    # (each node its own page id), so families share heads, sub-families more, and suffixes are own.
    ids: dict[tuple[int, ...], int] = {}
    tables, lens = [], []
    for _ in range(data.draw(st.integers(2, 16))):
        # Two choices per level: deep shared runs are common, so a later anchor often pays where the
        # first one does not (the case the skipping must not lose).
        path = data.draw(st.lists(st.integers(0, 1), min_size=2, max_size=8))
        pages = [ids.setdefault(tuple(path[: i + 1]), len(ids) + 1) for i in range(len(path))]
        tables.append(pages)
        # Mostly near the full length, so the long shared runs count (the newest page is never shared).
        lens.append(max(0, len(pages) * page_size - data.draw(st.integers(0, 2 * page_size))))
    width = max(map(len, tables))
    table = np.array([t + [0] * (width - len(t)) for t in tables])
    config = PrefixSharingConfig(
        min_saved_tokens=min_saved,
        block_m=4,
        min_group_size=min_group_size,
        min_shared_pages=min_shared_pages,
    )

    pruned = find_prefix_groups(table, np.array(lens), page_size, 2, config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefix_groups, "_may_share_more", lambda *_: True)  # every anchor tried, as before
        patch.setattr(prefix_groups, "_may_pay", lambda *_: True)  # every key ranked, as before
        exhaustive = find_prefix_groups(table, np.array(lens), page_size, 2, config)

    assert (pruned is None) == (exhaustive is None)
    if pruned is not None and exhaustive is not None:
        for field in ("seq_prefix_len", "item_row", "item_prefix_len", "members", "item_member_count"):
            assert getattr(pruned, field).tolist() == getattr(exhaustive, field).tolist()


@contextlib.contextmanager
def counting_rankings() -> Iterator[list[int]]:
    """Counts the calls of prefix_groups._best_prefix (the ranking of one key's members) inside."""
    calls: list[int] = []
    ranked = prefix_groups._best_prefix

    def counting(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return ranked(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prefix_groups, "_best_prefix", counting)
        yield calls


def test_one_shared_system_prompt_that_does_not_pay_is_ranked_once() -> None:
    # 64 rows behind one 8-page prompt, each with its own 2 pages: 63 * 8 * 4 = 2,016 tokens saved.
    table = np.array([[1 + p for p in range(8)] + [100 + 2 * b, 101 + 2 * b] for b in range(64)])
    lens = np.full(64, 10 * 4)
    with counting_rankings() as calls:
        assert find_prefix_groups(table, lens, 4, 2, PrefixSharingConfig(min_saved_tokens=2_017)) is None
        assert len(calls) == 1
        assert find_prefix_groups(table, lens, 4, 2, PrefixSharingConfig(min_saved_tokens=2_016)) is not None


def test_a_later_anchor_that_pays_is_still_tried_after_the_first_does_not() -> None:
    # Row 0 shares only page 1 with the rest (4 rows * 1 page saved); rows 1-4 share 5 pages (15 saved).
    table = np.array([[1, 2, 90, 0, 0, 0], *[[1, 3, 4, 5, 6, 10 + b] for b in range(4)]])
    lens = np.array([3, 6, 6, 6, 6])

    host = find_prefix_groups(table, lens, 1, 2, PrefixSharingConfig(min_saved_tokens=10))

    assert host is not None
    assert host.seq_prefix_len.tolist() == [0, 5, 5, 5, 5]


def test_a_first_anchor_whose_best_group_is_too_small_does_not_end_the_key() -> None:
    # Row 0 shares 10 pages with row 1 and 1 page with rows 2-4, each of which goes its own way after
    # page 1. Its best (rows 0, 1: 10 pages saved) is one member short of min_group_size 3, so it does
    # not pay though it saves enough; row 1 as anchor then groups rows 1-4 on page 1 (3 pages saved).
    table = np.array(
        [
            list(range(1, 13)),
            [*range(1, 11), 99, 98],
            *[[1, 50 + b, *range(60 + 10 * b, 70 + 10 * b)] for b in range(3)],
        ]
    )
    config = PrefixSharingConfig(min_group_size=3, min_saved_tokens=3)

    host = find_prefix_groups(table, np.full(5, 12), 1, 2, config)

    assert host is not None
    assert host.seq_prefix_len.tolist() == [0, 1, 1, 1, 1]


def test_a_batch_whose_largest_possible_group_saves_too_little_is_never_ranked() -> None:
    # The engine's 1,024-token shared prefix at batch 128 (page 16): 127 * 68 whole pages * 16 =
    # 138,176 tokens at most, under the default threshold (262,144): no sort, no compare.
    prompt = list(range(1, 65))
    table = np.array([prompt + [1_000 + 8 * b + p for p in range(8)] for b in range(128)])
    lens = np.full(128, 1_024 + 64 + 5)
    with counting_rankings() as calls:
        bound = 127 * ((1_024 + 64 + 4) // 16) * 16
        assert find_prefix_groups(table, lens, 16, 3, PrefixSharingConfig(min_saved_tokens=bound + 1)) is None
        assert not calls
        assert (
            find_prefix_groups(table, lens, 16, 3, PrefixSharingConfig(min_saved_tokens=127 * 1_024))
            is not None
        )
        assert len(calls) == 1
