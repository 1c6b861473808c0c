"""The serving front's handle on the engine process.

Starts the engine process (multiprocessing, spawn: no forked locks or CUDA
state), gives every request a worker-internal id, sends submits and aborts,
and routes each step's batch to the requests' streams on the event loop. A
reader thread takes whole messages off the output pipe and hands each batch
to the event loop: a message the engine has only half written (a large
batch, or an engine stalled mid-write) blocks that thread, never the loop,
so health checks and every other stream keep being served. The caller's
request id never keys anything here: it is a label the server echoes.

The text of a request with no stop strings is made here (RequestStream),
not in the engine: detokenizing costs the engine's step nothing for it.

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
from collections.abc import Callable
from multiprocessing.connection import Connection

from radixfair.errors import EngineStoppedError
from radixfair.tokenization import IncrementalDetokenizer
from radixfair_engine.request import Request
from radixfair_engine.text_stream import TextStream
from radixfair_worker.engine_loop import run_engine_process
from radixfair_worker.engine_protocol import (
    STOP,
    AbortRequest,
    EngineReady,
    EngineSpec,
    EngineStartFailed,
    PublishedState,
    ReportState,
    RequestEnd,
    StepBatch,
    SubmitRequest,
    request_key,
    worker_request_id,
)
from radixfair_worker.request_stream import RequestStream
from radixfair_worker.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

# An engine that has not answered a state request for this long is stuck, not busy: the longest
# CPU step seen was 35 s (SmolLM2-135M, a 400-token prefill on a 2-core box at load 14, two torch
# threads; 12 s with one), and a GPU step takes milliseconds.
STUCK_ENGINE_AFTER_S = 60.0


class EngineClient:
    """Runs the engine in its own process and streams each request's output back."""

    def __init__(
        self,
        spec: EngineSpec,
        metrics: WorkerMetrics,
        entry: Callable[[EngineSpec, Connection, Connection], None] = run_engine_process,
        stuck_engine_after_s: float = STUCK_ENGINE_AFTER_S,
    ) -> None:
        """``entry`` is the engine process's entry point (a module-level function, as spawn needs)."""
        self._spec = spec
        self._stuck_engine_after_s = stuck_engine_after_s
        self._entry = entry
        self._metrics = metrics
        # Keyed by the int key each request's rows carry (engine_protocol.worker_request_id).
        self._streams: dict[int, RequestStream] = {}
        self._ids = itertools.count()
        self._state_waiters: list[asyncio.Future[PublishedState]] = []
        # When the engine was asked for a state it has not published yet, and the last one it did.
        self._state_asked_at: float | None = None
        self._last_state: PublishedState | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._commands: Connection | None = None
        # Commands are pickled and written by a thread, so a slow or frozen engine process (a full
        # pipe) never stalls the event loop, and long prompts are not pickled on it.
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._outputs: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._detokenizer_factory: Callable[[], IncrementalDetokenizer] | None = None
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
            target=self._entry,
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
        self._reader = threading.Thread(target=self._read_batches, name="engine-batches", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_commands, name="engine-commands", daemon=True)
        self._sender.start()
        log.info("engine process %d ready", self._process.pid)

    async def stop(self) -> None:
        if self._process is None:
            return
        self._lose(EngineStoppedError("the worker is shutting down"))
        self._outbox.put(STOP)  # ends the sender too; harmless when the engine is gone already
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            log.warning("engine process did not stop; terminating it")
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 5)
        # The engine's end of the output pipe is closed now, so the reader reads EOF and ends.
        for thread in (self._sender, self._reader):
            if thread is not None:
                await asyncio.to_thread(thread.join, 5)
        for connection in (self._commands, self._outputs):
            if connection is not None:
                connection.close()
        self._process = None

    def detokenize_in_front(self, factory: Callable[[], IncrementalDetokenizer]) -> None:
        """From now on, requests with no stop strings are detokenized here instead of in the engine."""
        self._detokenizer_factory = factory

    async def engine_exit_code(self, timeout_s: float) -> int | None:
        """Waits up to ``timeout_s`` for the engine process to end; its exit code, None while it runs."""
        if self._process is None:
            return None
        await asyncio.to_thread(self._process.join, timeout_s)
        return self._process.exitcode

    # -- requests ---------------------------------------------------------------

    def submit(self, request: Request) -> RequestStream:
        """Renames ``request`` to a fresh worker-internal id, sends it, and returns its stream.

        The engine's refusal (a full queue, a prompt too long for its pages) arrives as the
        stream's end, so validation stays in one place: ``Engine.submit``.
        """
        self._check_running()
        key = next(self._ids)
        request.request_id = worker_request_id(key)
        client_row = self._metrics.client_labels.row(request.client_id)
        text = None
        if self._detokenizer_factory is not None and not request.sampling.stop_strings:
            # No stop string can end it, so its text decides nothing in the engine.
            request.text_in_engine = False
            text = TextStream(self._detokenizer_factory(), ())
        stream = RequestStream(request.request_id, request.arrival_time, client_row, text)
        self._streams[key] = stream
        self._outbox.put(SubmitRequest(request))
        return stream

    def abort(self, request_id: str) -> None:
        """Cancels the request with this worker-internal id; its pages return to the pool."""
        if self._streams.pop(request_key(request_id), None) is not None and not self.lost.is_set():
            self._outbox.put(AbortRequest(request_id))

    async def current_state(self) -> PublishedState:
        """Load and cache state as of the engine's next step (or now, when it is idle).

        While an earlier call still waits for that step, later calls get the state the engine
        published last (one step old) at once: a load report must not wait behind the engine's
        compute. A CPU step can take seconds (a prefill chunk on a busy box), and the routers
        count a load report that misses their health-check timeout as a failed check, so they
        took a worker that was only busy out of rotation. An ask the engine leaves unanswered for
        ``stuck_engine_after_s`` means a stuck engine: calls wait again, and the routers' checks
        of this worker fail.
        """
        self._check_running()
        now = time.monotonic()
        if self._state_asked_at is None:
            self._state_asked_at = now
            self._outbox.put(ReportState())
        elif self._last_state is not None and now - self._state_asked_at < self._stuck_engine_after_s:
            return self._last_state
        waiter: asyncio.Future[PublishedState] = asyncio.get_running_loop().create_future()
        self._state_waiters.append(waiter)
        return await waiter

    # -- batches from the engine ------------------------------------------------

    def _read_batches(self) -> None:
        """The reader thread: hands each whole message from the engine to the event loop, until EOF."""
        assert self._outputs is not None and self._loop is not None
        outputs, loop = self._outputs, self._loop
        while True:
            try:
                batch = outputs.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):  # the event loop has closed meanwhile
                    loop.call_soon_threadsafe(self._on_engine_gone)
                return
            try:
                loop.call_soon_threadsafe(self._deliver, batch)
            except RuntimeError:  # the event loop has closed: nobody is left to deliver to
                return

    def _on_engine_gone(self) -> None:
        if self.lost.is_set():  # stopped on purpose, or lost already
            return
        exit_code = self._process.exitcode if self._process is not None else None
        log.error("engine process exited (exit code %s); failing its requests", exit_code)
        self._lose(EngineStoppedError("the worker's engine process exited"))

    def _deliver(self, batch: StepBatch) -> None:
        """Fans a batch out to its requests' streams, in row order.

        Runs of rows with one token and no end (nearly all of them) take ``_deliver_tokens``;
        a row that ends its request, or carries another token count, takes ``_deliver_row``.
        """
        if self.lost.is_set():  # a batch read just before the loss was noticed
            return
        latencies = _Latencies(time.monotonic())
        texts = batch.texts
        if batch.counts is None:
            start = 0
            for row, end in (*batch.ends, (len(batch.keys), None)):
                keys, tokens = batch.keys[start:row], batch.token_ids[start:row]
                self._deliver_tokens(keys, tokens, texts[start:row] if texts else None, latencies)
                if end is not None:
                    text = texts[row] if texts else ""
                    self._deliver_row(batch.keys[row], batch.token_ids[row : row + 1], text, end, latencies)
                start = row + 1
        else:
            for key, token_ids, text, end in batch.rows():
                self._deliver_row(key, token_ids, text, end, latencies)
        if latencies.first_token_delays or latencies.token_gaps:
            # After the handlers this batch woke (their wake-ups are queued already): the histograms'
            # update (numpy, ~0.1 ms) is then never between a token and its message.
            assert self._loop is not None
            self._loop.call_soon(self._observe, latencies)
        if batch.state is not None:
            self._last_state, self._state_asked_at = batch.state, None
            waiters, self._state_waiters = self._state_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(batch.state)

    def _deliver_tokens(
        self, keys: list[int], tokens: list[int], texts: list[str] | None, latencies: _Latencies
    ) -> None:
        """One token per row, no ends: the decode step's rows, with the least work per row."""
        streams, now = self._streams, latencies.now
        first_delays, first_rows = latencies.first_token_delays, latencies.first_token_rows
        gaps, gap_rows = latencies.token_gaps, latencies.gap_rows
        for key, token, text in zip(keys, tokens, texts or itertools.repeat("")):
            stream = streams.get(key)
            if stream is None:  # aborted meanwhile
                continue
            last = stream.last_token_time
            if last is None:
                first_delays.append(now - stream.arrival_time)
                first_rows.append(stream.client_row)
            else:
                gaps.append(now - last)
                gap_rows.append(stream.client_row)
            stream.last_token_time = now
            if stream.push_token(token, text) is not None:  # its text failed here
                del streams[key]
                self._outbox.put(AbortRequest(stream.request_id))

    def _deliver_row(
        self, key: int, token_ids: list[int], text: str, end: RequestEnd | None, latencies: _Latencies
    ) -> None:
        """Any row: any token count, text and end."""
        stream = self._streams.get(key)
        if stream is None:  # aborted meanwhile
            return
        if token_ids:
            latencies.add(stream)
        recorded = stream.push(token_ids, text, end)
        if recorded is not None:
            del self._streams[key]
            if end is None:  # the stream failed here (its text); the engine still runs it
                self._outbox.put(AbortRequest(stream.request_id))

    def _observe(self, latencies: _Latencies) -> None:
        self._metrics.ttft.observe_many(latencies.first_token_delays, latencies.first_token_rows)
        self._metrics.inter_token.observe_many(latencies.token_gaps, latencies.gap_rows)

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

    def _lose(self, error: EngineStoppedError) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.fail(error)
        waiters, self._state_waiters = self._state_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)


class _Latencies:
    """The first-token delays and inter-token gaps one batch's delivery saw, with their client rows."""

    __slots__ = ("now", "first_token_delays", "first_token_rows", "token_gaps", "gap_rows")

    def __init__(self, now: float) -> None:
        self.now = now
        self.first_token_delays: list[float] = []
        self.first_token_rows: list[int] = []
        self.token_gaps: list[float] = []
        self.gap_rows: list[int] = []

    def add(self, stream: RequestStream) -> None:
        """Counts a token that reached ``stream`` now."""
        if stream.last_token_time is None:
            self.first_token_delays.append(self.now - stream.arrival_time)
            self.first_token_rows.append(stream.client_row)
        else:
            self.token_gaps.append(self.now - stream.last_token_time)
            self.gap_rows.append(stream.client_row)
        stream.last_token_time = self.now
