"""DLPM's rule 7, a turn's wait for room: a refused turn drains one client, not the whole batch.

(radixfair_engine.scheduler.dlpm, rule 7 and (g')): when the budget refuses a due turn, the running
client with the fewest requests waiting is drained for it: none of its requests (nor the turn's
client's) is admitted until the turn is taken, while prefix order goes on with the others' mostly
cached requests; once the drained client has nothing running, a refusal ends the step as before.

The case: client "hot" keeps 12 cached requests of different lengths outstanding on its document (more
than run at once), client "long" runs one long request on its own document and queues a second when
"back" returns from idle with a cold prompt that does not fit in the pages left. Runs go through the
real engine on a tiny random Llama.
"""

from __future__ import annotations

from worker.test_scheduler_dlpm_turns import PAGE, OrderedRecordingPolicy, greedy

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine

HOT = list(range(3000, 3048))  # 3 pages
LONG = list(range(4000, 4048))
LONG_TOKENS = 24


def hot_long_and_a_cold_return(
    model_dir, num_pages: int, cold_pages: int = 7, recorder_class=OrderedRecordingPolicy
):
    """Returns the recorder's log and the step of each entry (-1: before the case starts)."""
    scheduler = SchedulerConfig(
        policy="dlpm", quantum=4096.0, returning_turns=True, max_client_passes=0, in_batch_prefix_pages=0
    )
    config = EngineConfig(
        page_size=PAGE,
        num_pages=num_pages,
        max_running_requests=9,
        max_batched_tokens=256,
        scheduler=scheduler,
    )
    engine = build_engine(config, model_dir).engine
    engine.policy = recorder = recorder_class(engine.policy)
    engine.submit(greedy("first", "back", list(range(7000, 7020))))
    engine.submit(greedy("warm", "hot", HOT + [1]))
    while engine.has_work():
        engine.step()
    long = greedy("long", "long", LONG + [2], max_tokens=LONG_TOKENS)
    engine.submit(long)
    hot = [greedy(f"hot{i}", "hot", HOT + [10 + i], max_tokens=4 + i) for i in range(12)]
    for request in hot:
        engine.submit(request)
    cold = greedy("cold", "back", list(range(8000, 8000 + cold_pages * PAGE)))
    long2 = greedy("long2", "long", LONG + [3], max_tokens=LONG_TOKENS)
    steps = [-1] * len(recorder.log)  # the step of each log entry; -1 before the case starts
    for step in range(80):
        if step == 3:
            engine.submit(cold)
            engine.submit(long2)
        before = len(recorder.log)
        engine.step()
        steps += [step] * (len(recorder.log) - before)
        for i, request in enumerate(hot):
            if request.is_finished:  # a closed loop: 12 hot requests outstanding, 8 of them fit
                hot[i] = greedy(f"hot{step}-{i}", "hot", HOT + [100 + 13 * step + i], max_tokens=4 + i)
                engine.submit(hot[i])
    while engine.has_work():  # then the rest runs out
        before = len(recorder.log)
        engine.step()
        steps += [80] * (len(recorder.log) - before)
    return recorder.log, steps


def test_a_refused_turn_keeps_admitting_cached_requests_and_drains_one_client(tiny_model_dir):
    log, steps = hot_long_and_a_cold_return(tiny_model_dir, num_pages=22, cold_pages=10)

    def step_of(kind: str, request_id: str) -> list[int]:
        return [steps[i] for i, (k, r) in enumerate(log) if k == kind and r.request_id == request_id]

    waited = set(step_of("refused", "cold"))
    assert waited, "the case must make the cold return wait for room"
    admitted_while_waiting = {
        r.client_id for i, (kind, r) in enumerate(log) if kind == "admit" and steps[i] in waited
    }
    long_done, cold_in, long2_in = (
        step_of("leave", "long")[0],
        step_of("admit", "cold")[0],
        step_of("admit", "long2")[0],
    )

    # The batch does not drain: "hot"'s cached requests go on being admitted in the steps the turn waits.
    assert admitted_while_waiting == {"hot"}
    # "long" (fewest waiting) is drained: its waiting request goes in only after the turn, which is taken
    # as soon as "long"'s running request has left and freed its pages.
    assert cold_in <= long_done + 1
    assert long2_in >= cold_in
