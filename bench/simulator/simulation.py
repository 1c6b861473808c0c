"""Discrete-event simulation of one or many workers, each the real Engine with its real policy.

Time is virtual. Events are request releases and engine steps, kept in one
heap by time, so only workers with work are ever stepped and idle time costs
nothing. Stepping worker w at time t sets its clock to t and calls the real
``Engine.step``; the simulated runner advances the clock by the cost model's
time for the batch the engine built, and the next step of w is due then.
Releases that fall inside a step reach the engine's inbox and join at its
next step, as they would on a live worker.

With several workers, each release first goes through the router's real
decision path (``SimRouter``): cache view, routing policy, ledger.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.simulator.cost_model import StepCostModel
from bench.simulator.recorder import ObservedPolicy, Recorder
from bench.simulator.sim_runner import SimulatedRunner, VirtualClock
from bench.workloads.tokens import prompt_token_ids
from bench.workloads.trace import Trace, TraceRequest
from radixfair.errors import InvalidRequestError
from radixfair_engine.config import EngineConfig
from radixfair_engine.engine import Engine
from radixfair_engine.request import Request, SamplingConfig
from radixfair_engine.scheduler.registry import build_policy
from radixfair_router.config import ApproxTreeConfig, CostConfig, PolicyConfig
from radixfair_worker.engine_loop import DIGEST_LIMIT

if TYPE_CHECKING:
    from bench.simulator.sim_router import SimRouter

_RELEASE, _STEP, _REPORT = 0, 1, 2


@dataclass(frozen=True)
class SimConfig:
    engine: EngineConfig
    cost: StepCostModel
    num_workers: int = 1
    # Routing policy when num_workers > 1 (None: every request to worker 0).
    routing: PolicyConfig | None = None
    tree: ApproxTreeConfig = field(default_factory=ApproxTreeConfig)
    # How often each worker's cache digest reaches the router (RegistryConfig's poll interval).
    report_interval_s: float = 0.5
    max_context_tokens: int = 8192
    bin_s: float = 1.0
    # Clients whose pairwise service gaps are followed step by step (O(k^2) per step).
    tracked_clients: int = 16


class SimWorker:
    def __init__(self, index: int, config: SimConfig, recorder: Recorder) -> None:
        if config.engine.overlap_enabled:
            # SimulatedRunner picks tokens from len(output_ids), which overlap's placeholders shift,
            # and the cost model prices synchronous steps.
            raise ValueError("the simulator runs synchronous steps: set engine.overlap_schedule to false")
        self.index = index
        self.worker_id = f"w{index:03d}"
        self.clock = VirtualClock()
        self.runner = SimulatedRunner(
            config.engine.page_size, config.engine.num_pages, config.cost, self.clock
        )
        policy = ObservedPolicy(build_policy(config.engine.scheduler, clock=self.clock), recorder, self.clock)
        self.engine = Engine(
            config.engine, self.runner, policy, frozenset(), config.max_context_tokens, clock=self.clock
        )
        self.scheduled = False
        self.free_at = 0.0
        self.stepped_since_report = False
        self.requests = 0


@dataclass
class SimResult:
    config: SimConfig
    trace: Trace
    recorder: Recorder
    workers: list[SimWorker]
    router: SimRouter | None
    makespan: float
    steps: int
    rejected: list[str]


class Simulation:
    def __init__(self, config: SimConfig, trace: Trace, tracked: Sequence[str] | None = None) -> None:
        self.config = config
        self.trace = trace
        if tracked is None:
            tracked = _default_tracked(trace, config.tracked_clients)
        self.recorder = Recorder(config.engine.scheduler, config.bin_s, tracked)
        self.workers = [SimWorker(i, config, self.recorder) for i in range(config.num_workers)]
        self.router: SimRouter | None = None
        if config.num_workers > 1:
            from bench.simulator.sim_router import SimRouter  # the router's ledger needs redis-py

            if config.routing is None:
                raise ValueError("several workers need a routing policy")
            s = config.engine.scheduler
            costs = CostConfig(s.input_token_weight, s.output_token_weight, s.cached_token_weight)
            self.router = SimRouter(config.routing, costs, [w.worker_id for w in self.workers], config.tree)
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._dependents: dict[str, list[TraceRequest]] = defaultdict(list)
        self._worker_of: dict[str, SimWorker] = {}
        # Per request in flight: when the router placed it, and why (the recorder keeps both).
        self._routed: dict[str, tuple[float, str]] = {}
        self.steps = 0
        self.rejected: list[str] = []
        self._now = 0.0

    def run(self) -> SimResult:
        for request in self.trace.requests:
            if request.after is None:
                self._push(request.arrival_s, _RELEASE, request)
            else:
                self._dependents[request.after].append(request)
        if self.router is not None:
            self._push(self.config.report_interval_s, _REPORT, None)
        while self._heap:
            now, _, kind, payload = heapq.heappop(self._heap)
            self._now = now
            if kind == _RELEASE:
                self._release(payload, now)  # type: ignore[arg-type]
            elif kind == _STEP:
                self._step(payload, now)  # type: ignore[arg-type]
            elif self._busy():
                self._report(now)
        if self.router is not None:
            held = self.router.gate.waiting if self.router.gate is not None else 0
            self.router.close()
            if held:
                raise RuntimeError(f"simulation ended with {held} requests held in the router's gate")
        stuck = [w.worker_id for w in self.workers if w.engine.has_work()]
        if stuck:
            raise RuntimeError(f"simulation ended with work left on {stuck}")
        makespan = max((f.finished for f in self.recorder.finished), default=0.0)
        self.recorder.close(makespan)
        return SimResult(
            self.config,
            self.trace,
            self.recorder,
            self.workers,
            self.router,
            makespan,
            self.steps,
            self.rejected,
        )

    # -- events --------------------------------------------------------------

    def _release(self, spec: TraceRequest, now: float) -> None:
        tokens = prompt_token_ids(spec)
        request = Request(
            spec.request_id,
            spec.client_id,
            tokens,
            SamplingConfig(max_tokens=spec.max_tokens, ignore_eos=True),
            weight=spec.weight,
            arrival_time=now,
        )
        if self.router is None:
            self._submit(spec, request, self.workers[0], now)
        elif self.router.gate is not None:
            # A request held in the router's gate is waiting in the system, and its client is
            # backlogged: counted from here, as the policies count it once it reaches a worker (a
            # request counted twice is counted once). Without this, under global VTC almost no
            # client is ever seen backlogged and its Jain index and service gap say nothing.
            self.recorder.became_waiting(request, now)
            self.recorder.gate_changed(spec.client_id, +1)
            self.router.hold(spec.request_id, spec.client_id, lambda: self._leave_gate(spec, request))
        else:
            self._dispatch(spec, request)

    def _leave_gate(self, spec: TraceRequest, request: Request) -> None:
        self.recorder.gate_changed(spec.client_id, -1)
        self._dispatch(spec, request)

    def _dispatch(self, spec: TraceRequest, request: Request) -> None:
        assert self.router is not None
        now = self._now
        worker_id = self.router.route(spec.client_id, spec.weight, request.prompt_ids, now, spec.request_id)
        self._routed[spec.request_id] = (now, self.router.decision(spec.request_id).reason)
        self._submit(spec, request, self.workers[int(worker_id[1:])], now)

    def _submit(self, spec: TraceRequest, request: Request, worker: SimWorker, now: float) -> None:
        tokens = request.prompt_ids
        try:
            worker.engine.submit(request)
        except InvalidRequestError:
            self.rejected.append(spec.request_id)
            self._routed.pop(spec.request_id, None)
            self.recorder.left(request, now)  # counted as waiting while it was held in the gate
            if self.router is not None:
                # Nobody served it: the router refunds its admission, as RequestRouter does.
                self.router.rejected(spec.request_id, spec.client_id, spec.weight, len(tokens))
                self.router.release(spec.request_id)
            self._release_dependents(spec.request_id, now)
            return
        worker.requests += 1
        self._worker_of[spec.request_id] = worker
        if not worker.scheduled:
            worker.scheduled = True
            self._push(max(now, worker.free_at), _STEP, worker)

    def _step(self, worker: SimWorker, now: float) -> None:
        worker.clock.now = now
        outputs = worker.engine.step()
        self.steps += 1
        worker.stepped_since_report = True
        end = worker.clock.now
        for out in outputs:
            request = out.request
            if self.router is not None and out.new_token_ids:
                self.router.output(
                    request.request_id, request.client_id, request.weight, len(out.new_token_ids)
                )
            if out.finished:
                self._finished(worker, request, end)
        self.recorder.sample()
        worker.free_at = end
        if end == now:
            # Nothing was computed: only arrivals can change that, and they schedule a step.
            worker.scheduled = False
            if worker.engine.running:
                raise RuntimeError(f"{worker.worker_id} has running requests but computed nothing")
        elif worker.engine.has_work():
            self._push(end, _STEP, worker)
        else:
            worker.scheduled = False

    def _finished(self, worker: SimWorker, request: Request, now: float) -> None:
        dispatched, route = self._routed.pop(request.request_id, (request.arrival_time, ""))
        self.recorder.request_finished(request, worker.index, dispatched, route)
        del self._worker_of[request.request_id]
        if self.router is not None:
            self.router.finished(
                request.request_id,
                request.client_id,
                request.weight,
                len(request.prompt_ids),
                request.num_cached_tokens,
            )
            self.router.release(request.request_id)
        self._release_dependents(request.request_id, now)

    def _release_dependents(self, request_id: str, now: float) -> None:
        for dependent in self._dependents.pop(request_id, ()):
            self._push(max(dependent.arrival_s, now + dependent.think_s), _RELEASE, dependent)

    def _report(self, now: float) -> None:
        assert self.router is not None
        page_size = self.config.engine.page_size
        for worker in self.workers:
            if worker.stepped_since_report:
                worker.stepped_since_report = False
                self.router.report(worker.worker_id, page_size, worker.engine.cache.digest(DIGEST_LIMIT), now)
        self._push(now + self.config.report_interval_s, _REPORT, None)

    def _busy(self) -> bool:
        """Reports continue only while something else is still to happen."""
        return bool(self._heap) or any(w.engine.has_work() for w in self.workers)

    def _push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))


def _default_tracked(trace: Trace, limit: int) -> list[str]:
    """The busiest clients by request count: those most likely to be backlogged together."""
    counts: dict[str, int] = defaultdict(int)
    for request in trace.requests:
        counts[request.client_id] += 1
    return sorted(counts, key=lambda c: (-counts[c], c))[:limit]


def simulate(config: SimConfig, trace: Trace, tracked: Sequence[str] | None = None) -> SimResult:
    return Simulation(config, trace, tracked).run()
