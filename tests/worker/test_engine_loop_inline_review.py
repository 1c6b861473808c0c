"""Review of the inline engine loop (``engine_pipe_io: inline``): refusals, a front that goes, stop.

A real tiny engine steps on a thread here, as the engine process runs it, over real pipes.
"""

from __future__ import annotations

import threading
from multiprocessing import Pipe

from worker.engine_harness import greedy, make_stack

from radixfair.errors import QueueFullError
from radixfair_worker.engine_loop import EngineLoop
from radixfair_worker.engine_protocol import (
    STOP,
    ReportState,
    StepBatch,
    SubmitRequest,
    request_key,
    worker_request_id,
)

WAIT_S = 120.0  # a hang guard only
NEW_TOKENS = 60


def _start(engine):  # noqa: ANN001, ANN202
    commands_in, commands = Pipe(duplex=False)
    outputs, outputs_out = Pipe(duplex=False)
    loop = EngineLoop(engine, commands_in, outputs_out, "inline")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return loop, thread, commands, outputs


def _read_until_ended(outputs, keys: set[int]) -> dict[int, tuple[list[int], object]]:  # noqa: ANN001
    seen: dict[int, tuple[list[int], object]] = {}
    while not all(key in seen and seen[key][1] is not None for key in keys):
        assert outputs.poll(WAIT_S), "the loop's batches never reached the front"
        batch: StepBatch = outputs.recv()
        for key, token_ids, _text, end in batch.rows():
            tokens, ended = seen.get(key, ([], None))
            assert ended is None, "a row after the request's end"
            seen[key] = (tokens + token_ids, end)
    return seen


def test_a_refused_submit_ends_its_request_and_the_others_are_served(tiny_model_dir):
    engine = make_stack(tiny_model_dir, max_waiting_requests=1).engine
    loop, thread, commands, outputs = _start(engine)
    first, second = (greedy([5, 6, 7], 6, worker_request_id(k), ignore_eos=True) for k in (0, 1))
    try:
        commands.send([SubmitRequest(first), SubmitRequest(second)])  # one message: the second is refused
        seen = _read_until_ended(outputs, {request_key(first.request_id), request_key(second.request_id)})
    finally:
        commands.send([STOP])
        thread.join(WAIT_S)
    assert not thread.is_alive()
    tokens, end = seen[request_key(first.request_id)]
    assert len(tokens) == 6 and not isinstance(end, Exception)
    tokens, end = seen[request_key(second.request_id)]
    assert tokens == [] and isinstance(end, QueueFullError)
    assert not loop._keys


def test_an_idle_inline_loop_answers_a_state_report(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    _, thread, commands, outputs = _start(engine)
    try:
        commands.send([ReportState()])
        assert outputs.poll(WAIT_S)
        batch: StepBatch = outputs.recv()
        assert batch.state is not None and batch.state.snapshot.running_requests == 0
    finally:
        commands.send([STOP])
        thread.join(WAIT_S)
    assert not thread.is_alive()


def test_the_inline_loop_stops_when_the_front_closes_its_reading_end_mid_stream(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    _, thread, commands, outputs = _start(engine)
    # Far more steps than the loop can run before the front goes, however slow this box is.
    requests = [greedy([5 + k, 6, 7, 8], 1000, worker_request_id(k), ignore_eos=True) for k in range(8)]
    commands.send([SubmitRequest(r) for r in requests])
    assert outputs.poll(WAIT_S)
    outputs.recv()  # it is streaming
    outputs.close()  # the front's reader is gone; its command end stays open
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert engine.has_work()  # it stopped on the broken pipe, not at the requests' end


def test_stop_delivers_what_the_pipe_had_not_taken(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    _, thread, commands, outputs = _start(engine)
    requests = [greedy([5 + k, 6, 7], NEW_TOKENS, worker_request_id(k), ignore_eos=True) for k in range(4)]
    commands.send([SubmitRequest(r) for r in requests])
    # The front reads nothing until the engine has served every request, then asks it to stop.
    while engine.has_work() or engine.steps < NEW_TOKENS:
        thread.join(0.05)
        assert thread.is_alive()
    commands.send([STOP])
    seen = _read_until_ended(outputs, {request_key(r.request_id) for r in requests})
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert all(len(tokens) == NEW_TOKENS for tokens, _ in seen.values())
