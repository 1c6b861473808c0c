"""The inline engine loop (``engine_pipe_io: inline``): a front that reads late never stalls it.

A real tiny engine steps on a thread here, as the engine process runs it, over real pipes. The front's
end is not read while the loop serves a whole request: the loop must step it to its end meanwhile, and
once the front reads, every token must arrive, in order, exactly once, framed as ``Connection.recv``
reads it. The writer alone is then driven past what a pipe holds unread (one request's batches fit
in it): no offer blocks, what the pipe cannot take waits merged, and all of it arrives in order.
"""

from __future__ import annotations

import threading
import time
from multiprocessing import Pipe

from worker.engine_harness import greedy, make_stack

from radixfair_worker.engine_loop import EngineLoop
from radixfair_worker.engine_protocol import STOP, StepBatch, SubmitRequest, worker_request_id
from radixfair_worker.step_batch_writer import StepBatchWriter, frame

WAIT_S = 120.0  # a hang guard only
NEW_TOKENS = 120


def test_an_unread_front_never_stalls_the_inline_loop_and_every_token_arrives_once_in_order(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    commands_in, commands = Pipe(duplex=False)
    outputs, outputs_out = Pipe(duplex=False)
    loop = EngineLoop(engine, commands_in, outputs_out, "inline")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    request = greedy([5, 6, 7, 8], NEW_TOKENS, worker_request_id(0), ignore_eos=True)
    tokens: list[int] = []
    ended = []
    try:
        commands.send([SubmitRequest(request)])
        # Nothing is read until the engine has finished the request: every step's batch was written
        # (or merged) while the front read nothing. A loop whose write blocked would stall here.
        deadline = time.monotonic() + WAIT_S
        while engine.has_work() or engine.steps == 0:
            assert time.monotonic() < deadline, "the loop stopped stepping while the front read nothing"
            time.sleep(0.01)
        assert engine.steps >= NEW_TOKENS
        while not ended:
            assert outputs.poll(WAIT_S), "the loop's batches never reached the front"
            batch: StepBatch = outputs.recv()
            for _key, token_ids, _text, end in batch.rows():
                tokens += token_ids
                if end is not None:
                    ended.append(end)
    finally:
        commands.send([STOP])
        thread.join(WAIT_S)
    assert not thread.is_alive()
    # The same greedy request stepped by a plain engine: the tokens the front must have seen.
    reference = make_stack(tiny_model_dir).engine
    reference.submit(greedy([5, 6, 7, 8], NEW_TOKENS, "reference", ignore_eos=True))
    expected = [t for _ in iter(reference.has_work, False) for o in reference.step() for t in o.new_token_ids]
    assert len(tokens) == NEW_TOKENS and tokens == expected
    (outcome,) = ended
    assert outcome.completion_tokens == NEW_TOKENS


def test_the_writer_frames_as_connection_reads_and_merges_what_a_full_pipe_has_not_taken() -> None:
    reader, writer_end = Pipe(duplex=False)
    writer = StepBatchWriter(writer_end)
    sent = []
    # Far more than a pipe's buffer holds unread: the writer must not block on any offer.
    for step in range(4000):
        batch = StepBatch()
        for key in range(64):
            batch.add(key, [step * 64 + key])
        sent += batch.token_ids
        writer.offer(batch)
    assert writer.waiting  # the pipe is full; the rest waits, merged
    received: list[int] = []
    while writer.waiting or reader.poll(0):
        while reader.poll(0):
            received += reader.recv().token_ids
        writer.flush()
    assert received == sent
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
