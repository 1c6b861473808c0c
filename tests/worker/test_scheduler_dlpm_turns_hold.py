"""DLPM's rule 7, a turn's wait for room holds the room it gains: pages freed while a turn waits go to it.

(radixfair_engine.scheduler.dlpm, rule 7; ``RoomForTurns.hold``): room is free pages plus unlocked cached
pages (what ``PageBinder.reserve`` may evict). From a due turn's first refusal, the room gained between
the end of one step and the turn's refusal in the next joins the pages held for it, up to the pages it
needs; another client's admission while the turn waits must leave at least the held room. Before the
hold, the pages the drained client and finishing requests freed went to other clients' cached requests
as they appeared, and the turn waited for the next ones.

The case is test_scheduler_dlpm_turns_room's (a hot client's closed loop of cached requests, a drained
client, a cold return), on the real engine and a tiny random Llama; the recorder reads the room from the
engine's real cache and pool, so the held room is replayed here, not read from the policy.
"""

from __future__ import annotations

from worker.test_scheduler_dlpm_turns import OrderedRecordingPolicy
from worker.test_scheduler_dlpm_turns_room import hot_long_and_a_cold_return

from radixfair_engine.request import Request


def room(cache) -> int:
    return cache.allocator.num_free + cache.evictable_pages


def pages_needed(request: Request, cache) -> int:
    fill, page = request.fill_ids, cache.page_size
    return -(-len(fill) // page) - cache.match_length(fill[:-1]) // page


class RoomRecordingPolicy(OrderedRecordingPolicy):
    """Logs ("refused", (request, room, pages it needs)) at each budget refusal, ("admit", (request, room
    after it)) at each admission, and ("end", room) when a pick ends."""

    def pick_next(self, waiting, cache, budget):
        admitted = self.inner.pick_next(waiting, cache, _RoomBudget(budget, cache, self.log))
        self.log.append(("end", room(cache)))
        return admitted


class _RoomBudget:
    def __init__(self, budget, cache, log) -> None:
        self._budget, self._cache, self._log = budget, cache, log

    def holds(self, request: Request) -> bool:
        return self._budget.holds(request)

    def try_admit(self, request: Request) -> bool:
        need = pages_needed(request, self._cache)
        before = room(self._cache)
        admitted = self._budget.try_admit(request)
        if admitted:
            self._log.append(("admit", (request, room(self._cache))))
        else:
            self._log.append(("refused", (request, before, need)))
        return admitted


def room_left_below_the_hold(log) -> list[tuple[str, int, int]]:
    """Admissions of other clients, after the cold turn's refusal in a step, that left less room than
    was held for it then: (request id, room left, held)."""
    held, end_room, waiting, worst = 0, None, False, []
    in_step_after_refusal = False
    for kind, item in log:
        if kind == "refused" and item[0].request_id == "cold":
            _, now, need = item
            if waiting:
                held = max(held, min(need, held + max(0, now - end_room)))
            waiting, in_step_after_refusal = True, True
        elif kind == "admit" and item[0].request_id == "cold":
            waiting, in_step_after_refusal = False, False
        elif kind == "admit" and in_step_after_refusal and item[1] < held:
            worst.append((item[0].request_id, item[1], held))
        elif kind == "end":
            end_room, in_step_after_refusal = item, False
    return worst


def test_room_freed_while_a_turn_waits_is_held_for_it(tiny_model_dir):
    log, _ = hot_long_and_a_cold_return(
        tiny_model_dir, num_pages=22, cold_pages=10, recorder_class=RoomRecordingPolicy
    )

    refusals = [item for kind, item in log if kind == "refused" and item[0].request_id == "cold"]
    assert len(refusals) >= 2, "the case must make the cold return wait for room over several steps"
    assert any(kind == "admit" and item[0].request_id == "cold" for kind, item in log)
    assert room_left_below_the_hold(log) == []
