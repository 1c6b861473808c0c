"""The serving front's handle on the engine process.

Starts the engine process (multiprocessing, spawn: no forked locks or CUDA
state), gives every request a worker-internal id, sends submits and aborts,
and routes each step's batch to the requests' streams from the event loop,
which watches the pipe (no thread, no per-token callback). The caller's
request id never keys anything here: it is a label the server echoes.

When the engine process dies, every open stream and every later call fails
with UNAVAILABLE and ``lost`` is set, so the server reports NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from multiprocessing.connection import Connection

from radixfair.errors import EngineStoppedError
from radixfair_worker.engine_loop import run_engine_process
from radixfair_worker.engine_protocol import (
    STOP,
    AbortRequest,
    EngineReady,
    EngineSpec,
    EngineStartFailed,
    PublishedState,
    ReportState,
    StepBatch,
    SubmitRequest,
)
from radixfair_worker.request import Request
from radixfair_worker.request_stream import RequestStream
from radixfair_worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

# Batches read per wake of the event loop before the streams' consumers run again.
MAX_BATCHES_PER_WAKE = 4


class EngineClient:
    """Runs the engine in its own process and streams each request's output back."""

    def __init__(self, spec: EngineSpec, metrics: WorkerMetrics) -> None:
        self._spec = spec
        self._metrics = metrics
        self._streams: dict[str, RequestStream] = {}
        self._ids = itertools.count()
        self._state_waiters: list[asyncio.Future[PublishedState]] = []
        self._process: multiprocessing.process.BaseProcess | None = None
        self._commands: Connection | None = None
        # Commands are pickled and written by a thread, so a slow or frozen engine process (a full
        # pipe) never stalls the event loop, and long prompts are not pickled on it.
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._outputs: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.page_size = 0
        self.max_context_tokens = 0
        # Set when the engine process is gone; the server then reports NOT_SERVING.
        self.lost = asyncio.Event()

    async def start(self) -> None:
        """Starts the engine process and waits until its engine is built."""
        context = multiprocessing.get_context("spawn")
        command_reader, self._commands = context.Pipe(duplex=False)
        self._outputs, output_writer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=run_engine_process,
            args=(self._spec, command_reader, output_writer),
            name="radixfair-engine",
            daemon=True,
        )
        await asyncio.to_thread(self._process.start)
        # Only the engine process holds these ends now, so its death reads as EOF here.
        command_reader.close()
        output_writer.close()
        try:
            ready = await asyncio.to_thread(self._outputs.recv)
        except EOFError:
            await asyncio.to_thread(self._process.join, 5)
            raise EngineStoppedError(
                f"engine process exited during start-up (exit code {self._process.exitcode})"
            ) from None
        if isinstance(ready, EngineStartFailed):
            await asyncio.to_thread(self._process.join, 5)
            raise EngineStoppedError(f"engine failed to start: {ready.message}")
        assert isinstance(ready, EngineReady)
        self.page_size = ready.page_size
        self.max_context_tokens = ready.max_context_tokens
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._outputs.fileno(), self._on_readable)
        self._sender = threading.Thread(target=self._send_commands, name="engine-commands", daemon=True)
        self._sender.start()
        log.info("engine process %d ready", self._process.pid)

    async def stop(self) -> None:
        if self._process is None:
            return
        self._forget_pipe()
        self._outbox.put(STOP)  # ends the sender too; harmless when the engine is gone already
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            log.warning("engine process did not stop; terminating it")
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 5)
        self._lose(EngineStoppedError("the worker is shutting down"))
        if self._sender is not None:
            await asyncio.to_thread(self._sender.join, 5)
        for connection in (self._commands, self._outputs):
            if connection is not None:
                connection.close()
        self._process = None

    # -- requests ---------------------------------------------------------------

    def submit(self, request: Request) -> RequestStream:
        """Renames ``request`` to a fresh worker-internal id, sends it, and returns its stream.

        The engine's refusal (a full queue, a prompt too long for its pages) arrives as the
        stream's end, so validation stays in one place: ``Engine.submit``.
        """
        self._check_running()
        request.request_id = f"r{next(self._ids)}"
        client_row = self._metrics.client_labels.row(request.client_id)
        stream = RequestStream(request.request_id, request.arrival_time, client_row)
        self._streams[request.request_id] = stream
        self._outbox.put(SubmitRequest(request))
        return stream

    def abort(self, request_id: str) -> None:
        """Cancels the request with this worker-internal id; its pages return to the pool."""
        if self._streams.pop(request_id, None) is not None and not self.lost.is_set():
            self._outbox.put(AbortRequest(request_id))

    async def current_state(self) -> PublishedState:
        """Load and cache state as of the engine's next step (or now, when it is idle)."""
        self._check_running()
        waiter: asyncio.Future[PublishedState] = asyncio.get_running_loop().create_future()
        if not self._state_waiters:
            self._outbox.put(ReportState())
        self._state_waiters.append(waiter)
        return await waiter

    # -- batches from the engine ------------------------------------------------

    def _on_readable(self) -> None:
        assert self._outputs is not None
        try:
            # A bounded drain: under a fast engine, streams' consumers must get their turn too.
            for _ in range(MAX_BATCHES_PER_WAKE):
                self._deliver(self._outputs.recv())
                if not self._outputs.poll():
                    break
        except (EOFError, OSError):
            exit_code = self._process.exitcode if self._process is not None else None
            log.error("engine process exited (exit code %s); failing its requests", exit_code)
            self._lose(EngineStoppedError("the worker's engine process exited"))

    def _deliver(self, batch: StepBatch) -> None:
        now = time.monotonic()
        first_token_delays: list[float] = []
        first_token_rows: list[int] = []
        token_gaps: list[float] = []
        gap_rows: list[int] = []
        streams = self._streams
        for request_id, token_ids, text, end in batch.updates:
            stream = streams.get(request_id)
            if stream is None:  # aborted meanwhile
                continue
            if token_ids:
                if stream.last_token_time is None:
                    first_token_delays.append(now - stream.arrival_time)
                    first_token_rows.append(stream.client_row)
                else:
                    token_gaps.append(now - stream.last_token_time)
                    gap_rows.append(stream.client_row)
                stream.last_token_time = now
            stream.push(token_ids, text, end)
            if end is not None:
                del streams[request_id]
        self._metrics.ttft.observe_many(first_token_delays, first_token_rows)
        self._metrics.inter_token.observe_many(token_gaps, gap_rows)
        if batch.state is not None:
            waiters, self._state_waiters = self._state_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(batch.state)

    # -- losing the engine --------------------------------------------------------

    def _check_running(self) -> None:
        if self.lost.is_set() or self._commands is None:
            raise EngineStoppedError("the worker's engine process is not running")

    def _send_commands(self) -> None:
        """The sender thread: writes queued commands to the engine until STOP or a broken pipe.

        Whatever queued up while it waited for the GIL leaves as one message: under load the
        event loop rarely releases the GIL, and a message per command would pay that wait each.
        """
        assert self._commands is not None and self._loop is not None
        loop = self._loop
        while True:
            commands = [self._outbox.get()]
            while commands[-1] is not STOP:
                try:
                    commands.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commands.send(commands)
            except OSError:  # the engine process is gone; the output pipe's EOF says so too
                error = EngineStoppedError("the worker's engine process exited")
                with contextlib.suppress(RuntimeError):  # the event loop has closed meanwhile
                    loop.call_soon_threadsafe(self._lose, error)
                return
            if commands[-1] is STOP:
                return

    def _forget_pipe(self) -> None:
        if self._loop is not None and self._outputs is not None:
            self._loop.remove_reader(self._outputs.fileno())
            self._loop = None

    def _lose(self, error: EngineStoppedError) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        self._forget_pipe()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.fail(error)
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
