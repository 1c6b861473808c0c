"""InBatchPrefixHold.holds against its rule read literally, over random prompts, leaders and caches.

The rule (scheduler/in_batch_prefix.py): a waiting request is held while some running leader will
compute at least ``threshold`` pages of its prefix that the cache does not hold. Here that is
computed the plain way (compare the candidate's full pages with each leader's, page by page), and
the hold, which finds the shared pages through page chains, must agree on every draw.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_engine.page_allocator import PageAllocator
from radixfair_engine.radix_cache import RadixCache
from radixfair_engine.request import Request, RequestStatus, SamplingConfig
from radixfair_engine.scheduler.in_batch_prefix import InBatchPrefixHold
from radixfair_engine.scheduler.waiting_tree import match_key

PAGE = 2
# Prompts drawn as pages from a tiny set of pages, so they share prefixes of every length.
pages = st.lists(st.sampled_from([(1, 1), (1, 2), (2, 1)]), min_size=0, max_size=8)
prompts = st.builds(
    lambda body, tail: [t for page in body for t in page] + tail,
    pages,
    st.lists(st.integers(1, 2), min_size=1, max_size=PAGE),
)


def shared_full_pages(a: list[int], b: list[int]) -> int:
    count = 0
    while (count + 1) * PAGE <= min(len(a), len(b)) and a[count * PAGE : (count + 1) * PAGE] == b[
        count * PAGE : (count + 1) * PAGE
    ]:
        count += 1
    return count


def held_by_the_rule(candidate: Request, leaders: list[Request], cache: RadixCache, threshold: int) -> bool:
    key = match_key(candidate, PAGE)
    running = [leader for leader in leaders if leader.status is RequestStatus.RUNNING]
    shared = max((shared_full_pages(key, leader.prompt_ids) for leader in running), default=0)
    cached = cache.match_length(key[: shared * PAGE]) // PAGE
    return threshold > 0 and shared >= threshold and shared - cached >= threshold


@settings(max_examples=300, deadline=None)
@given(
    leader_prompts=st.lists(st.tuples(prompts, st.booleans()), max_size=4),
    late_leaders=st.lists(prompts, max_size=2),
    cached_prompts=st.lists(prompts, max_size=3),
    candidates=st.lists(st.tuples(prompts, st.lists(st.integers(1, 2), max_size=3)), min_size=1, max_size=4),
    threshold=st.integers(0, 3),
)
def test_holds_agrees_with_the_rule(leader_prompts, late_leaders, cached_prompts, candidates, threshold):
    cache = RadixCache(PageAllocator(256), PAGE)
    for prompt in cached_prompts:
        full = prompt[: len(prompt) - len(prompt) % PAGE]
        cache.insert(full, cache.allocator.allocate(len(full) // PAGE))
    leaders = []
    for index, (prompt, running) in enumerate(leader_prompts):
        leader = Request(f"l{index}", "c", prompt, SamplingConfig(max_tokens=4))
        # A leader preempted or finished since the step began computes nothing for the others.
        leader.status = RequestStatus.RUNNING if running else RequestStatus.WAITING
        leaders.append(leader)
    hold = InBatchPrefixHold(cache, threshold, leaders)

    for index, (prompt, output) in enumerate(candidates):
        candidate = Request(f"w{index}", "c", prompt, SamplingConfig(max_tokens=8))
        candidate.output_ids = list(output)  # a preempted request's key runs into its output
        assert hold.holds(candidate) == held_by_the_rule(candidate, leaders, cache, threshold)
        if index < len(late_leaders):  # admitted in this step: it leads from now on
            leader = Request(f"a{index}", "c", late_leaders[index], SamplingConfig(max_tokens=4))
            leader.status = RequestStatus.RUNNING
            leaders.append(leader)
            hold.lead(leader)
