"""The engine loop is woken by work, never by a timer: an idle loop answers a submit at once.

The loop runs here on its own thread with a real tiny engine and real pipes, as the engine process
runs it. Its idle wait's timer is set to an hour, so a loop that found work by polling would deliver
nothing within the test's bound; the loop's own counters say how each idle wait ended.
"""

from __future__ import annotations

import threading
from multiprocessing import Pipe

import pytest
from worker.engine_harness import greedy, make_stack

from radixfair_worker import engine_loop
from radixfair_worker.engine_loop import EngineLoop
from radixfair_worker.engine_protocol import STOP, ReportState, StepBatch, SubmitRequest

WAIT_S = 60.0  # a hang guard only: the timer the loop must not rely on is an hour


def _next_batch(outputs) -> StepBatch:  # noqa: ANN001
    assert outputs.poll(WAIT_S), "the engine loop sent nothing"
    return outputs.recv()


@pytest.mark.parametrize("pipe_io", engine_loop.PIPE_IO_MODES)
def test_a_submit_to_an_idle_engine_loop_is_served_without_waiting_for_its_timer(
    tiny_model_dir, monkeypatch: pytest.MonkeyPatch, pipe_io: str
):
    monkeypatch.setattr(engine_loop, "DIGEST_INTERVAL_S", 3600.0)
    engine = make_stack(tiny_model_dir).engine
    commands_in, commands = Pipe(duplex=False)
    outputs, outputs_out = Pipe(duplex=False)
    loop = EngineLoop(engine, commands_in, outputs_out, pipe_io)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        # A state report answered while idle: the loop has run and has nothing to step.
        commands.send([ReportState()])
        assert _next_batch(outputs).state is not None
        commands.send([SubmitRequest(greedy([5, 6, 7, 8], 3, "r0"))])
        first = _next_batch(outputs)
        while not first.token_ids:
            first = _next_batch(outputs)

        assert [update.key for update in first.rows() if update.token_ids] == [0]
        # No idle wait ran out its timer. How many waits a command ended depends on the scheduling
        # (on a loaded box both commands may be in the pipe before the loop first waits, and the
        # inline loop takes them without waiting), so that count is not asserted.
        assert loop.idle_timeouts == 0
    finally:
        commands.send([STOP])
        thread.join(WAIT_S)
    assert not thread.is_alive()
