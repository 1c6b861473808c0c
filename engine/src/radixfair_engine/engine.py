"""The continuous-batching engine loop.

Each ``step`` builds one batch: a token for every decoding request, the next
prefill chunk of every request still prefilling, and then as many waiting
requests as the scheduling policy admits into the remaining token budget.
New requests therefore join the running batch at every step, and a long
prompt is prefilled over several steps while the others keep decoding. When
pages run out, the newest running request is preempted: its pages return to
the pool (what it computed stays in the radix cache) and it waits to be
recomputed.

With overlap scheduling (``EngineConfig.overlap_schedule``) the host runs
one step behind the device: ``step`` launches batch n (forward and sampling,
no host sync), then waits for batch n-1's sampled ids and does its
bookkeeping (append, stop checks, detokenize, finish, cache pages) while
the device computes n, and returns n-1's outputs. Until its id is known a
sampled token is a placeholder in ``output_ids`` and the next step takes its
input id from the previous step's sampled tensor on the device. Whatever
needs every token known (preemption, aborts) first finishes the step in
flight. Sampling (greedy, temperature, top-k, top-p, seeds) runs batched on
the device (``sampler``), so sampled traffic keeps overlap on as well.

A failure that belongs to one request (its row could not be sampled, its
tokens could not be detokenized, its chunk fails the forward pass even on
its own) fails that request alone: it is finished with FinishReason.ERROR,
its pages are freed, its StepOutput carries the error, and the rest of the
batch carries on. Only a failure no single request reproduces escapes
``step``.

Binding requests to KV pages is ``page_binding`` (the block manager), and
turning sampled ids into per-request outputs is ``output_processor``; this
module decides what runs. Text is made here only for requests whose text
decides when they stop (stop strings), exactly and in the step that reads
the token, so a stop string costs no more than a stop token (with overlap,
the one token already launched is dropped: never streamed, never counted);
the serving front makes the text of every other request, off this step
(``request_stream``).

The engine is single-threaded; ``submit`` and ``abort`` are the only calls
that may come from other threads, and they only enqueue.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from radixfair.errors import InvalidRequestError, QueueFullError, RequestFailedError
from radixfair.tokenization import IncrementalDetokenizer
from radixfair_engine.config import EngineConfig
from radixfair_engine.decode_rows import DecodeRows
from radixfair_engine.engine_outputs import ClientStats, LoadSnapshot, StepOutput, StepStats
from radixfair_engine.inflight import InFlightStep, SampledTokens
from radixfair_engine.model_runner import ScheduledChunk, StepRunner
from radixfair_engine.output_processor import OutputProcessor, TokenOutcome
from radixfair_engine.page_binding import PageBinder
from radixfair_engine.prefill_batching import AdmissionHold
from radixfair_engine.request import PLACEHOLDER_TOKEN, FinishReason, Request, RequestStatus
from radixfair_engine.sampler import FAILED_ROW_MESSAGE
from radixfair_engine.scheduler.base import SchedulingPolicy
from radixfair_engine.scheduler.in_batch_prefix import InBatchPrefixHold

log = logging.getLogger(__name__)


class Engine:
    """The continuous-batching loop (see the module docstring).

    Pages are bound to requests by ``pages`` (the block manager: PageBinder), and sampled ids
    become per-request outputs in ``output_processor`` (OutputProcessor); the engine decides what runs.
    """

    def __init__(
        self,
        config: EngineConfig,
        runner: StepRunner,
        policy: SchedulingPolicy,
        eos_token_ids: frozenset[int],
        max_context_tokens: int,
        detokenizer_factory: Callable[[], IncrementalDetokenizer] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``runner`` is a StepRunner (``page_size``, ``num_pages``, ``run(chunks, sampled) -> sampled
        ids``, ``forget``): the model runner, or a simulator's cost model; it owns the sampler.
        ``clock`` stamps request timings (a simulator passes its virtual clock)."""
        self.config = config
        self.runner = runner
        self.policy = policy
        self.page_size = runner.page_size
        self.pages = PageBinder(runner.num_pages, self.page_size)
        self.allocator = self.pages.allocator
        self.cache = self.pages.cache
        self.output_processor = OutputProcessor(eos_token_ids, max_context_tokens, detokenizer_factory, clock)
        self.max_context_tokens = max_context_tokens
        self._clock = clock
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        # The same requests in decode-row order: a request keeps its row while it runs.
        self._decode_rows = DecodeRows()
        self._inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._aborts: queue.SimpleQueue[str] = queue.SimpleQueue()
        # Aborts taken before their request arrived; kept for one step (see _take_inbox).
        self._unmatched_aborts: list[str] = []
        self.client_stats: dict[str, ClientStats] = {}
        self.steps = 0
        self.step_stats = StepStats()
        # Tokens whose K/V the model computed (prefill chunks and decode inputs).
        self.computed_tokens = 0
        self.overlap = config.overlap_enabled
        graph_rows = config.decode_graph_rows
        self._admission_hold = AdmissionHold.for_engine(
            config.prefill_batching, graph_rows > 0, graph_rows or config.max_running_requests
        )
        # The launched step whose sampled ids are not read yet (overlap only), and the outputs
        # of steps finished during the current ``step`` call.
        self._in_flight: InFlightStep | None = None
        self._outputs: list[StepOutput] = []

    # -- calls from any thread ---------------------------------------------

    def submit(self, request: Request) -> None:
        """Queues a request; raises QueueFullError or InvalidRequestError at once."""
        self.validate(request)
        if len(self.waiting) + self._inbox.qsize() >= self.config.max_waiting_requests:
            raise QueueFullError(
                f"waiting queue is full ({self.config.max_waiting_requests} requests); retry later"
            )
        self._inbox.put(request)

    def abort(self, request_id: str) -> None:
        self._aborts.put(request_id)

    def validate(self, request: Request) -> None:
        prompt_len = len(request.prompt_ids)
        if not request.weight > 0:
            raise InvalidRequestError(f"client weight must be > 0, got {request.weight}")
        if prompt_len == 0:
            raise InvalidRequestError("prompt is empty")
        if prompt_len >= self.max_context_tokens:
            raise InvalidRequestError(
                f"prompt has {prompt_len} tokens; the context window holds {self.max_context_tokens}"
            )
        pages_needed = self.pages.pages_for(prompt_len + 1)
        if pages_needed > self.allocator.num_pages:
            raise InvalidRequestError(
                f"prompt needs {pages_needed} KV pages; this worker has {self.allocator.num_pages}"
            )

    # -- the loop ------------------------------------------------------------

    def has_work(self) -> bool:
        return bool(
            self._in_flight is not None
            or self.waiting
            or self.running
            or not self._inbox.empty()
            or not self._aborts.empty()
            or self._unmatched_aborts
        )

    def step(self) -> list[StepOutput]:
        """Schedules and launches one batch; returns the outputs of the steps finished meanwhile.

        Without overlap that is this step's batch; with overlap, the previous one.
        """
        started = time.perf_counter()
        self._take_inbox()
        chunks, sampled = self._schedule()
        if chunks:
            launched = self._launch(chunks, sampled)
            self._drain()
            self._in_flight = launched
            if not self.overlap:
                self._drain()
        else:
            self._drain()
        outputs, self._outputs = self._outputs, []
        self.step_stats.step_s += time.perf_counter() - started
        return outputs

    def _launch(self, chunks: list[ScheduledChunk], sampled: list[ScheduledChunk]) -> InFlightStep | None:
        """Runs the forward and the sampling of ``chunks`` on the device; nothing here waits for them.

        ``sampled`` are the chunks that complete their fill (one logits row each, in order). None
        when the forward failed and nothing of this step counts (see _isolate_forward_failure).
        """
        carry = self._in_flight.carry_for(chunks) if self._in_flight is not None else None
        try:
            # Before the placeholders below: each row draws its request's token len(output_ids).
            rows = self.runner.run(chunks, [c.request for c in sampled], carry)
        except Exception as error:
            self._isolate_forward_failure(chunks, error)
            return None
        tokens, failures = SampledTokens.copy_to_host(rows.device, rows.host), rows.failures
        for chunk in sampled:
            chunk.request.output_ids.append(PLACEHOLDER_TOKEN)
            chunk.request.pending_tokens += 1
        cache_computed, page_size = self.pages.cache_computed, self.page_size
        computed = 0
        for request, _, length in chunks:
            computed += length
            request.num_computed_tokens += length
            # Prompt pages this step completes: their K/V is written before any later step reads
            # them (same stream), so the next admission can share them now (a system prompt is
            # shared as soon as one request has prefilled it). Pages past the prompt wait for the
            # request's release (PageBinder.release caches everything computed, at a finish and a
            # preemption alike): no other prompt can match a running request's output, and
            # caching them page by page cost a fifth of a 256-row decode step's host time
            # (bench/results/engine_step_anatomy_null_dlpm_s12_*.md).
            inserted = request.num_inserted_tokens
            if request.num_computed_tokens - inserted >= page_size and inserted + page_size <= len(
                request.prompt_ids
            ):
                cache_computed(request)
        self.computed_tokens += computed
        stats = self.step_stats
        stats.steps += 1
        stats.sampled_rows += len(sampled)
        if computed != len(chunks):  # some chunk is longer than one token: a prefill
            stats.prefill_steps += 1
        for row, message in failures.items():
            # After the bookkeeping above, so finishing drops its placeholder like any other.
            self._outputs.append(self._fail(sampled[row].request, message))
        self.steps += 1
        return InFlightStep(chunks, sampled, tokens)

    def _isolate_forward_failure(self, chunks: list[ScheduledChunk], error: Exception) -> None:
        """Fails the requests whose chunk fails a forward pass on its own; re-raises if none does.

        Nothing of the failed pass was counted, so the others are simply computed again next step
        (what it wrote to their pages lies beyond their computed tokens, and is overwritten).
        A failure no single request reproduces belongs to the batch, and escapes ``step``.
        """
        log.warning("forward pass of %d chunks failed (%r); trying each alone", len(chunks), error)
        self._drain()  # every input id is then known, so a chunk runs alone without carried tokens
        culprits = 0
        for chunk in chunks:
            if chunk.request.status is not RequestStatus.RUNNING:
                continue
            try:
                self.runner.forward([chunk])
            except Exception as alone:
                culprits += 1
                self._outputs.append(self._fail(chunk.request, f"forward pass failed: {alone!r}"))
        if not culprits:
            raise error

    def _drain(self) -> None:
        """Finishes the step in flight, if any: reads its ids and does their bookkeeping."""
        step, self._in_flight = self._in_flight, None
        if step is None:
            return
        waited = time.perf_counter()
        tokens = step.tokens.wait()
        self.step_stats.device_wait_s += time.perf_counter() - waited
        outputs = self._outputs
        append = self.output_processor.append
        running = RequestStatus.RUNNING
        # The tokens of rows that go on, counted per (client, weight) and charged in one policy call
        # (_charge_outputs), before anything that reads the policy's state: a request's end.
        counted: dict[tuple[str, float], int] = {}
        for chunk, token in zip(step.sampled, tokens):
            request = chunk.request
            # A request that stopped on its previous token was still in this batch; its
            # extra token was discarded when it finished.
            if request.status is not running:
                continue
            if token < 0:  # the device could not sample its row (see sampler.FAILED_TOKEN)
                self._charge_outputs(counted)
                outputs.append(self._fail(request, FAILED_ROW_MESSAGE))
                continue
            appended = append(request, token)
            if appended.finish is None and appended.error is None:
                key = (request.client_id, request.weight)
                # Popped and put back: the dict ends in the order of each key's last row.
                counted[key] = counted.pop(key, 0) + 1
                outputs.append(StepOutput(request, [token], appended.text, finished=False))
            else:
                self._charge_outputs(counted)
                outputs.append(self._end_row(request, token, appended))
        self._charge_outputs(counted)

    def _schedule(self) -> tuple[list[ScheduledChunk], list[ScheduledChunk]]:
        """This step's chunks (decodes, prefill chunks, admissions), and those that sample a token."""
        chunks, prefilling = self._schedule_decodes()
        decodes = len(chunks)
        # A preemption while decodes were scheduled may have sent some back to waiting.
        prefilling = [r for r in prefilling if r.status is RequestStatus.RUNNING]
        budget = _StepBudget(self, self.config.max_batched_tokens - len(chunks), prefilling)
        chunks += self._schedule_prefills(prefilling, budget)
        if (
            self.waiting
            and budget.tokens_left > 0
            and len(self.running) < self.config.max_running_requests
            and not self._holds_back_admission(chunks)
        ):
            for request in self.policy.pick_next(list(self.waiting), self.cache, budget):
                chunks.append(budget.chunks_admitted[request.request_id])
        # A drain for a preemption may have finished requests scheduled earlier in this step.
        running = RequestStatus.RUNNING
        # Every decode chunk samples (it ends at its request's last token, and nothing after
        # _schedule_decodes changes a running request's length): only the chunks after them are
        # checked, not every row every step.
        sampled = [c for c in chunks[:decodes] if c.request.status is running]
        rest = [c for c in chunks[decodes:] if c.request.status is running]
        chunks = sampled + rest
        sampled += [
            c for c in rest if c.start + c.length == len(c.request.prompt_ids) + len(c.request.output_ids)
        ]
        return chunks, sampled

    # -- scheduling ----------------------------------------------------------

    def _holds_back_admission(self, chunks: list[ScheduledChunk]) -> bool:
        """Whether waiting requests stay out of this decode-only step (see prefill_batching)."""
        hold = self._admission_hold
        return hold is not None and hold.holds_back([c.length for c in chunks], self.waiting, self.steps)

    def _schedule_decodes(self) -> tuple[list[ScheduledChunk], list[Request]]:
        """A one-token chunk for every running request that decodes, in decode-row order
        (``decode_rows``: a request keeps its row while it runs); also, those still prefilling,
        oldest first.

        The per-request work here runs for the whole batch every step, so it reads the request's
        fields directly rather than through its derived properties.
        """
        chunks: list[ScheduledChunk] = []
        prefilling: list[Request] = []
        running, page_size = RequestStatus.RUNNING, self.page_size
        rows = self._decode_rows
        for request in rows.snapshot():
            if request.status is not running:
                continue
            num_output = len(request.output_ids)
            num_tokens = len(request.prompt_ids) + num_output
            to_compute = num_tokens - request.num_computed_tokens
            if to_compute != 1:
                if to_compute > 1:
                    prefilling.append(request)
                continue
            if num_output >= request.output_limit:  # OutputProcessor.length_reached, inlined
                # Its last token (a placeholder until the step in flight is read) is its final one:
                # it decodes no more, so its row goes to the last one now (see decode_rows).
                rows.remove(request)
                continue
            if len(request.page_table) * page_size < num_tokens and not self._ensure_pages(
                request, num_tokens
            ):
                continue
            chunks.append(ScheduledChunk(request, num_tokens - 1, 1))
        if len(prefilling) > 1:
            # A preemption for a later row may have sent one of them back to waiting (out of the
            # rows, so it has no admission number): drop those first.
            prefilling = [r for r in prefilling if r.status is running]
            prefilling.sort(key=rows.admission_order)  # prefill chunks oldest first, as admitted
        return chunks, prefilling

    def _schedule_prefills(self, prefilling: list[Request], budget: _StepBudget) -> list[ScheduledChunk]:
        chunks = []
        for request in prefilling:
            if budget.tokens_left <= 0:
                break
            length = min(budget.tokens_left, request.tokens_to_compute)
            chunks.append(ScheduledChunk(request, request.num_computed_tokens, length))
            budget.tokens_left -= length
        return chunks

    def _ensure_pages(self, request: Request, num_tokens: int) -> bool:
        """Grows the page table to hold ``num_tokens``, preempting the newest others if needed.

        Returns False when ``request`` itself had to be preempted.
        """
        missing = self.pages.missing_pages(request, num_tokens)
        while missing > 0:
            if self.pages.reserve(missing):
                self.pages.extend(request, missing)
                return True
            if self._in_flight is not None:
                # Preemption recomputes fill_ids, so every id must be known; finishing the
                # step in flight may also free enough pages.
                self._drain()
                if request.status is not RequestStatus.RUNNING:
                    return False
                continue
            victim = self.running[-1]
            self._preempt(victim)
            if victim is request:
                return False
        return True

    def admit(self, request: Request, tokens_left: int) -> ScheduledChunk | None:
        """Moves a waiting request into the batch with its cached prefix; None if it does not fit."""
        assert not request.pending_tokens, "a waiting request has only known tokens"
        cached = self.pages.bind_prefix(request)
        if cached is None:
            return None
        if request.times_admitted == 0:
            request.num_cached_tokens = cached
            stats = self.client_stats.setdefault(request.client_id, ClientStats())
            stats.requests += 1
            stats.prompt_tokens += len(request.prompt_ids)
            stats.cached_tokens += cached
            request.admitted_time = self._clock()
        request.times_admitted += 1
        request.status = RequestStatus.RUNNING
        self.waiting.remove(request)
        self.running.append(request)
        self._decode_rows.add(request)
        return ScheduledChunk(request, cached, min(tokens_left, request.num_tokens - cached))

    # -- after the forward pass ----------------------------------------------

    def _charge_outputs(self, counted: dict[tuple[str, float], int]) -> None:
        """Charges the counted output tokens (per (client, weight)) in one policy call; empties ``counted``.

        Charges commute but for which client was charged last (rule 7's floor, ServiceStanding):
        ``counted`` is in the order of each key's last row, so the last row's client goes last, as a
        charge per row would have left it.
        """
        if not counted:
            return
        self.policy.on_output_tokens(counted)
        stats = self.client_stats
        for (client, _), count in counted.items():
            stats[client].completion_tokens += count
        counted.clear()

    def _end_row(self, request: Request, token: int, appended: TokenOutcome) -> StepOutput:
        """The row of a request whose ``token`` ends it (a stop, its length, or its own failure)."""
        self.policy.on_output_tokens({(request.client_id, request.weight): 1})
        self.client_stats[request.client_id].completion_tokens += 1
        if appended.error is not None:
            return self._fail(request, appended.error)
        text = appended.text + self._finish(request, appended.finish)  # type: ignore[arg-type]
        return StepOutput(request, [token], text, finished=True)

    def _release(self, request: Request) -> None:
        self.pages.release(request)
        self.running.remove(request)
        self._decode_rows.remove(request)

    def _finish(self, request: Request, reason: FinishReason) -> str:
        """Ends the request and frees its pages; returns the text its stream still owes.

        Whatever the reason, text held back as a possible stop-string prefix is flushed here,
        so the concatenated deltas always equal ``request.final_text``.
        """
        # Stopped while its next token was already launched (overlap): that token is dropped.
        self.output_processor.drop_pending(request)
        if request.status is RequestStatus.RUNNING:
            self._release(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.finished_time = self._clock()
        self.policy.on_finished(request)
        self.runner.forget(request.request_id)
        return self.output_processor.close(request)

    def _fail(self, request: Request, message: str) -> StepOutput:
        """Finishes ``request`` alone after a failure that is its own; returns the output that says so."""
        log.error("request %s failed inside a step: %s", request.request_id, message)
        self._finish(request, FinishReason.ERROR)
        return StepOutput(request, [], "", finished=True, error=RequestFailedError(message))

    def _preempt(self, request: Request) -> None:
        self._release(request)
        request.num_computed_tokens = request.num_inserted_tokens = 0
        request.status = RequestStatus.WAITING
        request.preemptions += 1
        request.queued_step = self.steps
        self.waiting.insert(0, request)
        self.policy.on_arrival(request)

    def _take_inbox(self) -> None:
        """Takes the aborts, then the submits, then cancels what the aborts name.

        Aborts are taken first: a submit queued before its abort (the receiving thread's order)
        is then in the inbox already, whenever the thread ran. An abort whose request has not
        arrived (a submit from another thread) waits one more step for it, then is dropped:
        worker-internal ids are never reused, so a stale abort can never cancel another request.
        """
        carried, self._unmatched_aborts = self._unmatched_aborts, []
        fresh = []
        while not self._aborts.empty():
            fresh.append(self._aborts.get())
        while not self._inbox.empty():
            request = self._inbox.get()
            self.output_processor.open(request)
            request.queued_step = self.steps
            self.waiting.append(request)
            self.policy.on_arrival(request)
        if not fresh and not carried:
            return
        by_id = {r.request_id: r for r in (*self.running, *self.waiting)}
        if any(request_id in by_id for request_id in (*carried, *fresh)):
            # A cancelled request leaves with its known tokens only.
            self._drain()
        for request_id in (*carried, *fresh):
            request = by_id.get(request_id)
            if request is not None and not request.is_finished:
                tail = self._finish(request, FinishReason.CANCELLED)
                self._outputs.append(StepOutput(request, [], tail, finished=True))
        self._unmatched_aborts = [request_id for request_id in fresh if request_id not in by_id]

    # -- reporting -----------------------------------------------------------

    def load_snapshot(self) -> LoadSnapshot:
        prompt = sum(s.prompt_tokens for s in self.client_stats.values())
        cached = sum(s.cached_tokens for s in self.client_stats.values())
        return LoadSnapshot(
            queue_length=len(self.waiting),
            running_requests=len(self.running),
            running_tokens=sum(r.num_tokens for r in self.running),
            free_pages=self.allocator.num_free,
            total_pages=self.allocator.num_pages,
            cached_pages=self.cache.cached_pages,
            cache_hit_rate=cached / prompt if prompt else 0.0,
            client_stats={k: ClientStats(**vars(v)) for k, v in self.client_stats.items()},
            step_stats=StepStats(**vars(self.step_stats)),
        )


class _StepBudget:
    """The AdmissionBudget a policy admits through during one step."""

    def __init__(self, engine: Engine, tokens_left: int, prefilling: list[Request]) -> None:
        """``prefilling``: the running requests still prefilling, which lead the in-batch prefix hold
        (their pages reach the cache chunk by chunk)."""
        self._engine = engine
        self.tokens_left = tokens_left
        self.chunks_admitted: dict[str, ScheduledChunk] = {}
        self._hold = InBatchPrefixHold(
            engine.cache, engine.config.scheduler.in_batch_prefix_pages, prefilling
        )

    def holds(self, request: Request) -> bool:
        return self._hold.holds(request)

    def try_admit(self, request: Request) -> bool:
        engine = self._engine
        if self.tokens_left <= 0 or len(engine.running) >= engine.config.max_running_requests:
            return False
        chunk = engine.admit(request, self.tokens_left)
        if chunk is None:
            return False
        self.tokens_left -= chunk.length
        self.chunks_admitted[request.request_id] = chunk
        self._hold.lead(request)
        return True
