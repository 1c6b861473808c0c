"""Deficit Longest Prefix Match (Cao et al., arXiv 2501.14312), one worker.

Rules (see /work/shared/reference/dlpm.md):
  1. Order the waiting queue by longest prefix match, ties by arrival, at any
     queue depth (``PrefixMatchQueue``: no fallback to arrival order).
  2. Walk it; at a request of client i, admit only if ``q_i > 0`` and
     ``budget.try_admit`` accepts. Requests of spent clients are skipped,
     and the walk goes on. The first budget refusal ends admission for this
     step: the batch is full, and the walk order is the priority.
     Within a client (ours; the paper has no such rule): the request that
     fills client i's place is its longest-waiting request once that one has
     been passed over ``max_overtakes`` (K) times, else the request the walk
     is at. Only *which* of i's requests goes in changes, never *whether* i
     is admitted at that point, so rules 3-5 and the bound below are
     untouched.
  3. At admission, ``q_i -= w_in · computed + cached_token_weight · w_in ·
     cached`` prompt tokens; per generated token, ``q_i -= w_out``. A request
     re-admitted after preemption is not charged its input again.
  4. When a pass admits nothing, is not cut short by the budget, and requests
     still wait, every waiting client (all then have ``q_i <= 0``) gets
     ``q_i += Q · weight_i``; then walk again.
  5. A client that goes idle (nothing waiting, nothing running) is capped at
     ``Q · weight_i``. What a client starts with when it has a waiting request
     again is ``idle_deficit`` (``DeficitLedger``): by default VTC's lift, in
     deficit terms, applied to debt only (it never takes credit away). Every
     rule keeps ``q_i <= Q · weight_i``.

  6. In-batch prefix (``scheduler.in_batch_prefix``): a request the budget
     *holds* (another request is computing >= threshold pages of its uncached
     prefix) is passed over: not admitted, not charged. Its client is still
     backlogged, so one without credit counts as spent and gets rule 4's
     refills like every other waiting client, and one with credit stops
     rule 4: no refill while a client with ``q_i > 0`` waits, parked or not
     (refilling past it let the others' deficits catch up at every parked
     step, and weights stopped counting: a hypothesis counterexample, weights
     2 / 1 served 1:1). If client i's due request
     (rule 2) is held, i's place at that point is skipped, so the hold never
     lets i's other requests overtake it. A hold ends when the leader's pages
     are cached or the leader leaves the running batch: at most one prefill.

  7. A returning client's turn (``ClientPassLimit``; ours, from VTC's lift:
     VTC puts a client that has a waiting request again at the smallest
     counter, so it goes first). Off by default (``returning_turns``).
     Trigger and gate (``turns_only_when_behind``, opt-in too): when client
     i becomes backlogged (a request arrives with none of i's waiting: VTC's
     lift trigger), ``ServiceStanding`` lifts i's VTC counter (its cumulative
     charge over its weight) to the smallest among the backlogged clients,
     and i's turn is pending only if its counter is then *below the mean* of
     the other backlogged clients': i has had less than its share of what they
     got. A client at or above that mean is served by prefix order and its
     credit alone (the fairness bound), so no turn evicts a hot prefix for a
     client that is not behind. With one other client backlogged (or all at
     one counter) the lift puts i at the mean: nobody is ahead of it, and it
     takes no turn. Ungated (the earlier form, the default when on), the
     trigger is "was idle" (nothing waiting, nothing running), for every such
     client. Measured on one worker, 10 seeds
     (bench/results/eval_returning_turns_*.md, median / worst seed): gated
     1.6% / 3.4% of throughput on the shared-prefix pattern, 1.7% / 3.9% on
     the heavy-client flood (3.6% / 4.6% and 3.5% / 6.1% before the wait
     for room below). A change of order that is not rule 7 (rule 2's K at
     10 for 8) moves one seed by 4.1%: the worst seed measures that spread
     as much as the rule. Where it went: turns admit cold 2,048-token requests
     that evict hot documents, and a refused turn ended the step, so the
     batch drained (to ~5-12 running) while the turn waited for a
     document's pages to unlock. A pending turn ends when one
     of i's requests is admitted. Once a pending client with credit has been
     passed by ``max_client_passes`` (P, default 0) admissions of other
     clients, it is due: before each request the walk visits, due clients
     with credit each get one request admitted (the one rule 2 gives their
     place), in the order they became due, ties by the larger
     ``q_i / weight_i``. A held due request (rule 6) waits for the hold.
     Wait for room (``RoomForTurns``): at the first budget refusal of a due
     client's turn, one other client with requests running is *drained*
     for it: the one with the fewest requests waiting (its prefix is the one
     fewest queued requests would use), then the fewest running. Until the
     turn is taken, the drained client and the turn's client have nothing
     admitted, no other turn is tried in that step, and prefix order goes on
     with requests of the others whose prompt the cache holds at least half
     of; the step counts as cut short by the budget, so it makes no refill.
     Once the drained client has nothing running, a refusal ends the step,
     as a refusal does in VTC's order. A cached returning request takes its turn too: among equally
     hot requests prefix order is arrival order. Only a returning client
     takes a turn, once per return: a client that stays backlogged on an
     evicted document is served by prefix order and its credit alone, since
     turns rotating over clients whose documents no longer fit evict the
     next document each time (on the returning-client trace: hit rate 0.93
     -> 0.72). Without the turn, a returning client whose document was
     evicted while it was idle matches nothing and walks behind every cached
     request of the credited clients: the bound's 2Q term in time.

Fairness bound. Let ``C_i`` be client i's cumulative charge (rule 3) and
``s_i = C_i / weight_i``. Take an interval in which clients A and B both have
a waiting request at every instant, and weights do not change.
  (a) Equal refills: a refill happens only when no waiting client has credit,
      and reaches every waiting client, so A and B get the same number k.
      Hence ``s_i(t2) - s_i(t1) = k·Q + (q_i(t1) - q_i(t2)) / weight_i``.
  (b) ``q_i <= Q · weight_i`` always (rules 4, 5).
  (c) ``q_i > -D_i``: take the last instant q_i was positive. From then on
      client i is admitted nothing, so the charges since are at most one
      admission (``<= w_in · L_i``, as cached_token_weight <= 1) plus the
      outputs of its requests running then: at most R_i requests of at most
      M_i tokens each. Refills only add. So ``D_i = w_in · L_i + w_out · M_i · R_i``.
A held request counts as waiting only once the hold ends (rule 6): the
intervals below are those in which A and B each have an admissible request.
Steps (a)-(c) use only that a client is admitted only with credit and that
a refill comes only when a whole pass admits nothing, not cut short; neither
depends on the order in which credited clients are admitted, so rule 7's
turns, which only reorder admissions of credited clients, leave the bound as
it is. Its wait for room skips the turn's and the drained client's requests
(and colder ones) whatever their credit, but a step with such a wait counts
as cut short by the budget and makes no refill, so no client with credit
misses a refill the others get.
Therefore, for any such interval,

    |Δs_A - Δs_B| < 2·Q + D_A / weight_A + D_B / weight_B

where L_i is client i's longest prompt, M_i its largest max_tokens and R_i
the most of its requests running at once (at most max_running_requests).
With one running request per client and unit weights this is 2·(Q + U), U
being the largest single-request cost: the digest's "Q plus the largest
single-request cost". Several running requests widen it, because a client
keeps paying for their outputs after its deficit is spent.
tests/worker/test_scheduler_dlpm_fairness.py checks it through the engine.

Per-request wait bound. The fairness bound is between clients; alone, it lets
LPM order starve one request of a client behind that client's own cache-hot
requests for ever (SGLang #31954). With rule 2's K:
  (d) A waiting request r is overtaken by at most K requests of its own client
      that joined the queue after it. Each admission of another request of
      its client passes r over once; after K, r is due, and from then on the
      client's place goes to its due request that joined first, which is r or
      one that joined before r. (A budget refusal of a due request ends the
      step, and a held due request skips its client's place (rule 6), so
      nothing overtakes it either.)
  (e) So r is admitted within ``K + A_r`` admissions of its client, A_r being
      the client's requests waiting ahead of r when r joined.
  (f) In time: while r waits, client i is admitted at most ``n = K + A_r``
      requests, so ``Δs_i <= (n + R_i) · U_i / weight_i`` with ``U_i = w_in ·
      L_i + w_out · M_i``, and by the bound above every other continuously
      backlogged client j receives less than
      ``Δs_j < (n + R_i) · U_i / weight_i + 2·Q + D_i / weight_i + D_j / weight_j``.
      The wait of r is bounded by the time the engine takes to serve that,
      plus, for each hold on r or on a due request of i ahead of it (rule 6),
      one leader's prefill.
Returning-client bound (rule 7).
  (g) Let client i become backlogged with its turn pending (gated: behind
      the backlogged clients' mean lifted VTC counter; ungated: back from
      idle), and keep credit and a waiting request that is not held. Its
      passes are counted from its return, or from the refill that gave it
      credit, so at most P admissions of other clients come before it is
      due. The walk checks for due clients before every admission, so from
      then on only turns of clients due before it (or due with it and more
      credit) come first, one admission each: a turn ends a client's pending
      state, so none is counted twice. Admissions in a step after a due
      turn's refusal (the wait for room) are not counted here; they are
      bounded in time below. Hence, those aside, at most ``P + (n - 1)``
      requests of other clients are admitted before one of i's, n being the
      number of clients. The gate only decides *whether* a turn is pending,
      never how it is taken, so (g) holds for every pending client either way.
  (g') The wait for room is bounded: a drained client has none of its
      requests admitted while the turn it is drained for is due and refused,
      so it has nothing running once each request it had running at the
      first refusal has finished or been preempted: at most
      ``ceil(L / max_batched_tokens) + M`` steps, L and M the longest prompt
      and max_tokens. Each turn has one drain, and a due client waits behind
      at most the drains of the turns due before it and its own, at most n.
      After its drain a refused turn ends the step, as before.
  (h) Against VTC: VTC lifts i to the smallest counter among the backlogged,
      so it is admitted first, or after the clients tied with it (at most
      n - 1). For a client that returns behind (and, ungated, for every
      client back from idle), DLPM makes it wait at most ``P + (n - 1)``
      more admissions of others than VTC, at most n drains (g'), and, as
      under VTC, for room for its own request: after its drain a refused
      turn ends the step. (VTC's order has no drain: its refusal ends the
      step at once, so its batch runs down while the head waits for room.) A client that returns at or
      above the mean takes no turn: it has received at least the backlogged
      clients' average, weight for weight, and its wait is DLPM's, bounded
      through the fairness bound (its credit against the others' 2Q), not by
      VTC's order. P = 0 (the default) is VTC's order for a returning client's
      first request; a larger P lets that many cache-hot admissions pass it
      first.
  (i) Idling banks nothing: the turn gives order, not credit. The client is
      charged for what the turn admits (rule 3), a spent client takes no turn,
      and its deficit on return is the idle rule's (rule 5), at most one
      quantum. The gate's counters are lifted as VTC's are, so idling does not
      make a client behind either. A client that returns on every request
      gets at most one request ahead per return, as VTC's lift gives it, and
      is held to its share by its credit. tests/worker/test_scheduler_dlpm_turns.py
      checks (g) and (h) ungated, tests/worker/test_scheduler_dlpm_turns_behind.py
      gated.
K trades locality for the wait: K = 0 is arrival order inside each client, a
large K is plain DLPM. A forced admission costs its own prefill, which it
would pay whenever it ran; only how long the hot prefix must stay cached
meanwhile changes. tests/worker/test_scheduler_dlpm_wait.py checks (d).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request, RequestStatus
from radixfair_engine.scheduler.base import AdmissionBudget, Clock, FairnessState, OutputCounts, PrefixMatcher
from radixfair_engine.scheduler.client_activity import ClientActivity
from radixfair_engine.scheduler.client_passes import ClientPassLimit, RoomForTurns, ServiceStanding, Turns
from radixfair_engine.scheduler.deficit_ledger import DeficitLedger
from radixfair_engine.scheduler.overtake_limit import OvertakeLimit
from radixfair_engine.scheduler.queue_order import PrefixMatchQueue
from radixfair_engine.scheduler.service_meter import ServiceMeter


class DLPMPolicy:
    """LPM order gated by per-client deficits; ``Q`` trades fairness (small) for locality (large)."""

    name = "dlpm"

    def __init__(self, config: SchedulerConfig, clock: Clock = time.monotonic) -> None:
        self._meter = ServiceMeter(config)
        self._activity = ClientActivity()
        self._ledger = DeficitLedger(config.quantum, idle_rule=config.idle_deficit)
        self._overtakes = OvertakeLimit(config.max_overtakes)
        self._passes = ClientPassLimit(config.max_client_passes)
        self._returning_turns = config.returning_turns
        self._turns_only_when_behind = config.turns_only_when_behind
        self._standing = ServiceStanding()
        self._room = RoomForTurns()
        self._queue = PrefixMatchQueue()

    @property
    def quantum(self) -> float:
        return self._ledger.quantum

    @property
    def refill_count(self) -> int:
        """Refills so far; many refills per admission mean Q is small for the load."""
        return self._ledger.refills

    def deficits(self) -> dict[str, float]:
        return self._ledger.deficits()

    def fairness_state(self) -> FairnessState:
        return FairnessState(deficits=self.deficits(), refills=self.refill_count)

    def on_arrival(self, request: Request) -> None:
        client = request.client_id
        self._ledger.set_weight(client, request.weight)
        if not self._activity.has_waiting(client):
            if self._turn_trigger(client) and self._returning_turns:  # the trigger lifts the counter
                self._passes.returned(client)
            self._ledger.on_backlogged(client, self._activity.waiting_clients())
        self._activity.arrived(request)
        self._overtakes.joined(request)
        self._queue.joined(request)

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        order = _Replay(request for _, request in self._queue.ordered(waiting, cache))
        credited = [c for c in self._activity.waiting_clients() if self._ledger.has_credit(c)]
        turns = self._passes.turns(credited, self._ledger.normalised)
        admitted: list[Request] = []
        taken: set[Request] = set()
        while True:
            passed, budget_full, spent, parked_with_credit = self._walk(order, taken, budget, turns, cache)
            admitted += passed
            if budget_full or not spent:
                break
            if not passed:
                if parked_with_credit:
                    # A client with credit whose requests are only parked (rule 6) is backlogged
                    # with deficit left: no refill while it waits, or every spent client would be
                    # refilled past it and weights would stop counting.
                    break
                self._ledger.refill(spent)
                for client in spent:
                    if self._ledger.has_credit(client):
                        turns.credited(client)
        self._queue.admitted(admitted)
        return admitted

    def on_output_tokens(self, counts: OutputCounts) -> None:
        per_token = self._meter.charge_outputs(counts)
        self._ledger.charge_tokens(counts, per_token)
        self._standing.charged_tokens(counts, per_token)

    def on_finished(self, request: Request) -> None:
        self._activity.finished(request)
        self._overtakes.left(request)
        self._queue.left(request)
        if not self._activity.has_waiting(request.client_id):
            self._ledger.on_drained(request.client_id)
        if self._activity.is_idle(request.client_id):
            self._ledger.on_idle(request.client_id)

    def client_service(self) -> dict[str, float]:
        return self._meter.client_service()

    def _turn_trigger(self, client: str) -> bool:
        """Rule 7: does ``client``, becoming backlogged, have a turn pending?

        Gated (``turns_only_when_behind``): if its lifted VTC counter is below the mean of the other
        backlogged clients'. Ungated (the earlier form): if it was idle. The counters are lifted either
        way, so switching the gate never finds a client that banked order by idling.
        """
        behind = self._standing.backlogged(client, self._activity.waiting_clients())
        return behind if self._turns_only_when_behind else self._activity.is_idle(client)

    def _walk(
        self,
        order: Iterable[Request],
        taken: set[Request],
        budget: AdmissionBudget,
        turns: Turns,
        cache: PrefixMatcher,
    ) -> tuple[list[Request], bool, set[str], bool]:
        """One pass over the requests not yet ``taken`` (admitted this step; it adds to it).

        Due clients' turns (rule 7) go before each request of the pass, and after its last. A turn the
        budget refuses ends the pass, or, while the client drained for it still runs requests
        (``RoomForTurns``), leaves the rest of the pass to the requests ``_room_while_waiting`` lets
        through, and takes no more turns. Returns those admitted, whether the budget refused one (or a
        turn waits for room), the clients skipped for want of credit, and whether a client with
        credit was skipped only because its request is parked.
        """
        admitted, spent = [], set()
        parked_with_credit = False
        allowed: Callable[[Request], bool] | None = None  # set while a refused turn waits for room

        def still_waiting(request: Request) -> bool:
            return request.status is RequestStatus.WAITING and request in self._queue and request not in taken

        for request in order:
            client = request.client_id
            while request not in taken:
                if allowed is None:
                    refused = self._take_turns(turns, taken, budget, still_waiting, admitted)
                    if refused is not None:
                        allowed = self._room_while_waiting(refused, cache)
                        if allowed is None:
                            return admitted, True, spent, parked_with_credit
                    if request in taken:
                        break
                if budget.holds(request):
                    # Parked for a leader's prefix (rule 6): not admitted, not charged. Its client is
                    # still backlogged, so when spent it takes the refills the others get meanwhile;
                    # parking it out of them lost it a quantum per refill for good.
                    if self._ledger.has_credit(client):
                        parked_with_credit = True
                    else:
                        spent.add(client)
                    break
                if not self._ledger.has_credit(client):
                    spent.add(client)
                    break
                chosen = self._overtakes.due(client, still_waiting) or request
                if chosen is not request and budget.holds(chosen):
                    break  # the client's place is its due request's, which is parked: nobody overtakes it
                if allowed is not None and not allowed(chosen):
                    break
                if not budget.try_admit(chosen):
                    return admitted, True, spent, parked_with_credit
                self._admitted(chosen, taken, turns)
                admitted.append(chosen)
        if allowed is None and self._take_turns(turns, taken, budget, still_waiting, admitted) is None:
            return admitted, False, spent, parked_with_credit
        return admitted, True, spent, parked_with_credit

    def _room_while_waiting(self, refused: str, cache: PrefixMatcher) -> Callable[[Request], bool] | None:
        """Which requests prefix order may admit while ``refused``'s turn waits for room; None: none.

        None of the turn's client's or the drained client's (``RoomForTurns``); of the others only
        requests the cache holds at least half of, which add little to the pages in use (a colder
        one would compete with the turn for the pages the drain frees).
        """
        activity = self._activity
        drained = self._room.refused(refused, activity.running, activity.waiting, activity.running_clients())
        if drained is None:
            return None

        def allowed(request: Request) -> bool:
            client = request.client_id
            if client in (refused, drained):
                return False
            return 2 * cache.match_length(request.prompt_ids) >= len(request.prompt_ids)

        return allowed

    def _take_turns(
        self,
        turns: Turns,
        taken: set[Request],
        budget: AdmissionBudget,
        still_waiting: Callable[[Request], bool],
        admitted: list[Request],
    ) -> str | None:
        """Rule 7: admits one request of each due client, in turn order (``ClientPassLimit``).

        The request is the one rule 2 gives the client's place: its due request, else its
        longest-waiting one. Returns the client whose request the budget refused, if one was: nothing
        overtakes a due client's request while it waits for room but what ``_room_while_waiting``
        lets through, and at most until the client drained for it has drained (then, as under VTC's
        order, the refusal ends the step). None when every due client took its turn or was skipped.
        """
        while (client := turns.next_due()) is not None:
            chosen = None
            if self._ledger.has_credit(client):
                chosen = self._overtakes.due(client, still_waiting) or self._overtakes.head(
                    client, still_waiting
                )
            if chosen is None or budget.holds(chosen):
                turns.skip(client)  # spent, nothing waiting, or parked for a leader's prefix (rule 6)
                continue
            if not budget.try_admit(chosen):
                return client
            self._admitted(chosen, taken, turns)
            admitted.append(chosen)
        return None

    def _admitted(self, request: Request, taken: set[Request], turns: Turns) -> None:
        """The bookkeeping of one admission (rule 3's charge), in a turn or in prefix order."""
        client = request.client_id
        taken.add(request)
        self._activity.admitted(request)
        if not self._activity.has_waiting(client):
            self._ledger.on_drained(client)
        self._overtakes.admitted(request)
        turns.admitted(client)
        self._room.admitted(client)
        self._charge(request, self._meter.charge_admission(request))

    def _charge(self, request: Request, amount: float) -> None:
        self._ledger.charge(request.client_id, amount)
        self._standing.charged(request.client_id, amount / request.weight)


class _Replay:
    """An iterable over a one-shot iterator, which it consumes only as far as any pass has gone."""

    def __init__(self, source: Iterator[Request]) -> None:
        self._source = source
        self._seen: list[Request] = []

    def __iter__(self) -> Iterator[Request]:
        i = 0
        while True:
            if i == len(self._seen):
                following = next(self._source, None)
                if following is None:
                    return
                self._seen.append(following)
            yield self._seen[i]
            i += 1
