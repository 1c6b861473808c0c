"""The engine loop, run in the engine process: steps the engine and ships each step as one batch.

The serving front (gRPC, asyncio) lives in another process, so the loop never
waits on the gRPC layer or on the GIL the front holds. Two helper threads do
the pipe I/O: one receives commands (submit and abort only enqueue into the
engine, which is built for that), one sends batches, so a step only appends
its batch to a local queue. When the front reads more slowly than the engine
steps, the sender coalesces the batches waiting for it into one message.

With ``EngineSpec.pipe_io`` "inline" the process runs one thread instead: the
loop itself takes the commands waiting in the pipe before each step and writes
each step's batch without blocking (``step_batch_writer``), so no other thread
of the engine process ever holds the GIL the loop needs. The threads let the
GIL go whenever the loop makes a device call that releases it, and the loop
then waits for them (bench/results/serving_gpu_h200_s10_switch_ab.md).

A lost front (its pipe closed) stops the loop, so the engine process never
outlives the worker. An engine whose every step fails for the whole batch
(``EngineConfig.max_failed_steps_in_a_row`` in a row) is broken, not busy:
the process exits with EXIT_STEPS_FAILING, the front reads the closed pipe
and reports NOT_SERVING, and its router takes it out of rotation.
"""

from __future__ import annotations

import faulthandler
import logging
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from radixfair.errors import RadixfairError
from radixfair.gc_tuning import tune_for_serving
from radixfair_worker.engine_protocol import (
    STOP,
    AbortRequest,
    EngineReady,
    EngineSpec,
    EngineStartFailed,
    PublishedState,
    ReportState,
    RequestEnd,
    RequestOutcome,
    StepBatch,
    SubmitRequest,
    request_key,
)
from radixfair_worker.step_batch_writer import StepBatchWriter

if TYPE_CHECKING:
    from radixfair_engine.engine import Engine
    from radixfair_engine.engine_outputs import StepOutput

log = logging.getLogger(__name__)

# The digest walks the whole radix tree, so it is refreshed at most this often.
DIGEST_INTERVAL_S = 0.25
DIGEST_LIMIT = 4096
# The engine process's exit code after too many failed steps in a row.
EXIT_STEPS_FAILING = 3


def _tell_front(outputs: Connection, message: object) -> bool:
    """Sends ``message``; False when the front is gone (stopped while the engine was being built):
    then the engine has no one to serve and ends quietly, as the loop does when the front goes."""
    try:
        outputs.send(message)
    except OSError:  # BrokenPipeError: the front closed its end
        log.info("the serving front is gone; the engine process ends")
        return False
    return True


def run_engine_process(
    spec: EngineSpec,
    commands: Connection,
    outputs: Connection,
    after_build: Callable[[Engine], None] | None = None,
) -> None:
    """Entry point of the engine process (multiprocessing, spawn context).

    ``after_build`` (a module-level function, so it pickles) sees the engine before it serves:
    how a test puts a fault into a real engine process.
    """
    # Ctrl-C reaches the whole process group; the front decides when the engine stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `kill -USR1` dumps every thread's stack to the log: how a stuck engine is diagnosed.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Imported here: the front imports this module for the entry point and never needs torch.
        import torch

        from radixfair_engine.engine_builder import build_engine

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        if spec.switch_interval_s > 0:
            sys.setswitchinterval(spec.switch_interval_s)
        engine = build_engine(spec.engine, spec.model_dir).engine
    except Exception as error:
        # A config mistake is said in one line by the front (as run_service does); a bug keeps its traceback.
        if not isinstance(error, (ValueError, OSError)):
            log.exception("engine failed to start")
        _tell_front(outputs, EngineStartFailed(f"{type(error).__name__}: {error}"))
        return
    if after_build is not None:
        after_build(engine)
    tune_for_serving()  # after the model and the graphs are built: they are what it freezes
    if not _tell_front(outputs, EngineReady(engine.page_size, engine.max_context_tokens)):
        return
    loop = EngineLoop(engine, commands, outputs, spec.pipe_io)
    loop.run()
    if loop.broken:
        sys.exit(EXIT_STEPS_FAILING)


# How the engine process moves commands in and batches out (EngineSpec.pipe_io).
PIPE_IO_MODES = ("threads", "inline")
# How long a stopping inline loop keeps writing what the pipe has not taken yet.
FINAL_FLUSH_S = 10.0


class EngineLoop:
    """Steps ``engine`` while it has work; commands in and batches out go through the two pipes.

    ``pipe_io``: "threads" (a receiving and a sending thread beside the loop) or "inline" (the loop
    alone; see the module docstring).
    """

    def __init__(
        self, engine: Engine, commands: Connection, outputs: Connection, pipe_io: str = "threads"
    ) -> None:
        if pipe_io not in PIPE_IO_MODES:
            raise ValueError(f"pipe_io must be one of {PIPE_IO_MODES}, got {pipe_io!r}")
        self.engine = engine
        self.pipe_io = pipe_io
        self._commands = commands
        self._outputs = outputs
        self._outbox: queue.SimpleQueue[StepBatch | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._state_wanted = threading.Event()
        self._digest: list[int] = []
        self._digest_time = float("-inf")
        self._failed_in_a_row = 0
        # The wire key of each request the engine holds (worker-internal id -> key), set at submit
        # and dropped with the row that ends the request; read once per row, so no id is parsed then.
        self._keys: dict[str, int] = {}
        # Set when the loop stopped because its steps kept failing for the whole batch.
        self.broken = False
        # Idle waits that a command ended, and those that ran out their timer (the digest's refresh):
        # work never waits for the timer, so a submit to an idle loop is always a wake-up.
        self.idle_wakeups = 0
        self.idle_timeouts = 0
        # Where a batch made outside a step goes (a refused submit): the sender's queue, or the
        # inline writer.
        self._emit = self._outbox.put

    def run(self) -> None:
        if self.pipe_io == "inline":
            self._run_inline()
            return
        receiver = threading.Thread(target=self._receive, name="engine-commands", daemon=True)
        sender = threading.Thread(target=self._send, name="engine-batches", daemon=True)
        receiver.start()
        sender.start()
        try:
            self._loop()
        finally:
            self._outbox.put(None)
            sender.join(timeout=10)

    def _loop(self) -> None:
        engine = self.engine
        while not self._stopping.is_set():
            if not engine.has_work():
                if self._state_wanted.is_set():
                    self._outbox.put(StepBatch(state=self._take_state()))
                if self._wake.wait(timeout=DIGEST_INTERVAL_S):
                    self.idle_wakeups += 1
                else:
                    self.idle_timeouts += 1
                self._wake.clear()
                continue
            batch = self._step()
            if batch.keys or batch.state is not None:
                self._outbox.put(batch)

    def _step(self) -> StepBatch:
        """One engine step as a batch, with the state asked for; a failed step fails its requests."""
        try:
            batch = self._batch_of(self.engine.step())
            if batch.token_ids:
                # Progress; a step that only cancelled the failed requests is none.
                self._failed_in_a_row = 0
        except Exception as error:  # one failed step must not kill the worker
            log.exception("engine step failed")
            batch = self._fail_all(RadixfairError(f"engine step failed: {error}"))
            self._count_failure()
        if self._state_wanted.is_set():
            batch.state = self._take_state()
        return batch

    def _run_inline(self) -> None:
        """The loop alone: commands waiting in the pipe before each step, batches written unblocked."""
        writer = StepBatchWriter(self._outputs)
        self._emit = writer.offer
        commands = self._commands.fileno()
        engine = self.engine
        try:
            while not self._stopping.is_set():
                self._take_commands()
                if self._stopping.is_set():
                    break
                if engine.has_work():
                    batch = self._step()
                    if batch.keys or batch.state is not None:
                        writer.offer(batch)
                    else:
                        writer.flush()
                    continue
                if self._state_wanted.is_set():
                    writer.offer(StepBatch(state=self._take_state()))
                    continue
                blocked = [writer.fileno()] if writer.waiting else []
                readable, writable, _ = select.select([commands], blocked, [], DIGEST_INTERVAL_S)
                if readable:
                    self.idle_wakeups += 1
                elif not writable:
                    self.idle_timeouts += 1
                writer.flush()
            writer.drain(FINAL_FLUSH_S)
        except BrokenPipeError:  # the front is gone
            log.info("the serving front is gone; the engine loop stops")
            self._stopping.set()

    def _take_commands(self) -> None:
        """Handles every command message the pipe holds now (inline mode); EOF is a STOP."""
        while not self._stopping.is_set() and self._commands.poll(0):
            try:
                commands = self._commands.recv()
            except (EOFError, OSError):  # the front is gone
                commands = [STOP]
            self._handle(commands)

    def _batch_of(self, outputs: list[StepOutput]) -> StepBatch:
        """The step's outputs as one columnar batch; no Request object crosses the pipe.

        A row with one token, no text and no end (nearly every row of a decode step) costs two
        appends; any other row takes ``StepBatch.add``. A row of a request that has ended already
        (failed with its whole step, its cancellation still draining) is left out: nothing follows
        an end.
        """
        batch = StepBatch()
        keys, tokens, key_of = batch.keys, batch.token_ids, self._keys.get
        # While True, no row so far has needed counts or texts: a plain row is then two appends.
        plain = True
        for output in outputs:
            ids = output.new_token_ids
            if output.finished or output.text_delta or len(ids) != 1:
                self._add_row(batch, output)
                plain = batch.counts is None and batch.texts is None
                continue
            key = key_of(output.request.request_id)
            if key is None:
                continue
            if plain:
                keys.append(key)
                tokens.append(ids[0])
            else:
                batch.add(key, ids)
        return batch

    def _add_row(self, batch: StepBatch, output: StepOutput) -> None:
        """Appends any row; the request's key is dropped with the row that ends it."""
        request_id = output.request.request_id
        key = self._keys.pop(request_id, None) if output.finished else self._keys.get(request_id)
        if key is not None:
            batch.add(key, output.new_token_ids, output.text_delta, _end(output))

    def _count_failure(self) -> None:
        """Stops the loop once ``max_failed_steps_in_a_row`` steps in a row failed for the whole batch."""
        self._failed_in_a_row += 1
        limit = self.engine.config.max_failed_steps_in_a_row
        if limit and self._failed_in_a_row >= limit:
            log.error("%d engine steps in a row failed; the engine process exits", self._failed_in_a_row)
            self.broken = True
            self._stopping.set()

    def _fail_all(self, error: RadixfairError) -> StepBatch:
        """Ends every request the engine holds with ``error`` (their aborts free the pages)."""
        ids = [request.request_id for request in (*self.engine.running, *self.engine.waiting)]
        batch = StepBatch()
        for request_id in ids:
            self.engine.abort(request_id)
            key = self._keys.pop(request_id, None)
            if key is not None:
                batch.add(key, [], "", error)
        return batch

    def _take_state(self) -> PublishedState:
        self._state_wanted.clear()
        engine = self.engine
        now = time.monotonic()
        if now - self._digest_time >= DIGEST_INTERVAL_S:
            self._digest = engine.cache.digest(DIGEST_LIMIT)
            self._digest_time = now
        policy = engine.policy
        fairness = policy.fairness_state()
        return PublishedState(
            snapshot=engine.load_snapshot(),
            digest=self._digest,
            client_service=policy.client_service(),
            deficits=fairness.deficits,
            virtual_counters=fairness.virtual_counters,
            refills=fairness.refills,
        )

    # -- the pipe threads ------------------------------------------------------

    def _receive(self) -> None:
        while not self._stopping.is_set():
            try:
                commands = self._commands.recv()
            except (EOFError, OSError):  # the front is gone
                commands = [STOP]
            self._handle(commands)
            self._wake.set()

    def _handle(self, commands: list[object]) -> None:
        """One message's commands, in order; STOP stops the loop and ends the message."""
        for command in commands:
            if command is STOP:
                self._stopping.set()
                self._wake.set()
                return
            if isinstance(command, SubmitRequest):
                self._submit(command)
            elif isinstance(command, AbortRequest):
                self.engine.abort(command.request_id)
            elif isinstance(command, ReportState):
                self._state_wanted.set()

    def _submit(self, command: SubmitRequest) -> None:
        request = command.request
        key = request_key(request.request_id)
        # Before the submit: the stepping thread may take the request at once.
        self._keys[request.request_id] = key
        try:
            self.engine.submit(request)
        except Exception as error:
            del self._keys[request.request_id]
            refusal = error if isinstance(error, RadixfairError) else RadixfairError(str(error))
            batch = StepBatch()
            batch.add(key, [], "", refusal)
            self._emit(batch)

    def _send(self) -> None:
        while True:
            batch = self._outbox.get()
            if batch is None:
                return
            # Batches that piled up while the pipe was busy leave as one message.
            while True:
                try:
                    later = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if later is None:
                    self._send_one(batch)
                    return
                batch.merge(later)
            if not self._send_one(batch):
                return

    def _send_one(self, batch: StepBatch) -> bool:
        try:
            self._outputs.send(batch)
            return True
        except OSError:  # the front is gone
            self._stopping.set()
            self._wake.set()
            return False


def _end(output: StepOutput) -> RequestEnd | None:
    """How the output's request ended, if it did."""
    if output.error is not None:  # this request alone failed inside the step
        return output.error
    if output.finished:
        return RequestOutcome.of(output.request)
    return None
