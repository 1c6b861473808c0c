"""Engine-process entry points that put a fault into the serving path (for EngineClient tests).

They run in a spawned process, so they are module-level functions of an importable module.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

from radixfair_engine.engine import Engine
from radixfair_engine.request import FinishReason, Request
from radixfair_worker.engine_loop import run_engine_process
from radixfair_worker.engine_protocol import (
    STOP,
    EngineReady,
    EngineSpec,
    RequestOutcome,
    RequestUpdate,
    StepBatch,
)

# The batch written in two halves: large enough to span several reads, small enough for the pipe buffer.
HALF_WRITTEN_TOKENS = list(range(3000))
HALF_WRITTEN_TEXT = "abc" * 3000
# Written into the spec's model_dir once the first half is in the pipe.
HALF_WRITTEN_MARKER = "first-half-written"


class BrokenPolicy:
    """The engine's own policy with a bug in ``pick_next``: every step that admits fails for the batch."""

    def __init__(self, policy) -> None:
        self._policy = policy
        self.name = policy.name

    def pick_next(self, waiting: Sequence[Request], cache, budget) -> list[Request]:
        raise RuntimeError("a bug in the scheduling policy")

    def __getattr__(self, name: str):
        return getattr(self._policy, name)


def break_the_policy(engine: Engine) -> None:
    engine.policy = BrokenPolicy(engine.policy)


def run_engine_with_a_broken_policy(spec: EngineSpec, commands: Connection, outputs: Connection) -> None:
    run_engine_process(spec, commands, outputs, after_build=break_the_policy)


def engine_writing_a_batch_in_two_halves(spec: EngineSpec, commands: Connection, outputs: Connection) -> None:
    """Writes half of a batch for request r0, waits for the front's next command, then the rest.

    The end that follows says whether a command arrived while the message was half written
    (text "released"), or whether the front stayed silent until the wait ran out ("timed out").
    """
    outputs.send(EngineReady(page_size=16, max_context_tokens=4096))
    batch = StepBatch.of([RequestUpdate(0, HALF_WRITTEN_TOKENS, HALF_WRITTEN_TEXT)])
    data = bytes(ForkingPickler.dumps(batch))
    message = struct.pack("!i", len(data)) + data  # multiprocessing's framing: length, then the pickle
    half = len(message) // 2
    os.write(outputs.fileno(), message[:half])
    (Path(spec.model_dir) / HALF_WRITTEN_MARKER).touch()
    released = commands.poll(60)
    os.write(outputs.fileno(), message[half:])
    text = "released" if released else "timed out"
    end = RequestOutcome(FinishReason.STOP, 0, len(HALF_WRITTEN_TOKENS), 0, None, None, None, text)
    outputs.send(StepBatch.of([RequestUpdate(0, [], "", end)]))
    while True:  # serve until the front stops us
        try:
            if STOP in commands.recv():
                return
        except EOFError:
            return
