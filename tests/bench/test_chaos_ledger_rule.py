"""The chaos soak's ledger check is issue 12's rule, per client (notes/DECISIONS.md, #12).

booked - received must be 0 for a client no router kill cut, and between 0 and one message per
stream a router kill cut (a stream that failed on the killed router within the cut window of its
kill); one message is at most the run's largest delta and at most what the cut request had left.
"""

from __future__ import annotations

from bench.chaos.faults import FaultRecord
from bench.chaos.load import LoadTally
from bench.chaos_soak import KILL_CUT_WINDOW_S, ledger_rows

KILL_AT = 1000.0
ROUTER_KILL = FaultRecord("kill -9 router", "router-1", at_s=60.0, started=KILL_AT)


def tally_with_cuts(*cuts: tuple[str, int, float, int]) -> LoadTally:
    tally = LoadTally()
    tally.failed_streams.extend(cuts)
    return tally


def row(received: int, booked: int, tally: LoadTally, message_tokens: int = 4) -> dict[str, object]:
    [only] = ledger_rows({"a": received}, {"a": booked}, [tally], [ROUTER_KILL], message_tokens)
    return only


def test_a_client_no_router_kill_cut_must_be_exact():
    assert row(100, 100, LoadTally())["passed"]
    assert not row(100, 101, LoadTally())["passed"]
    assert not row(100, 99, LoadTally())["passed"]


def test_each_cut_stream_allows_one_message_of_excess_and_never_a_deficit():
    cut = tally_with_cuts(("a", 1, KILL_AT + 0.5, 20), ("a", 1, KILL_AT + 1.0, 20))
    checked = row(100, 108, cut)
    assert (checked["streams_cut_by_router_kills"], checked["bound"], checked["passed"]) == (2, 8, True)
    assert not row(100, 109, cut)["passed"]
    assert not row(100, 99, cut)["passed"]


def test_one_message_is_never_more_than_what_the_cut_request_had_left():
    assert row(100, 102, tally_with_cuts(("a", 1, KILL_AT, 2)))["bound"] == 2
    assert not row(100, 103, tally_with_cuts(("a", 1, KILL_AT, 2)))["passed"]


def test_streams_failing_elsewhere_or_outside_the_window_are_not_cut_by_the_kill():
    other_router = ("a", 0, KILL_AT + 0.5, 20)
    too_late = ("a", 1, KILL_AT + KILL_CUT_WINDOW_S + 0.5, 20)
    before = ("a", 1, KILL_AT - 0.5, 20)
    checked = row(100, 101, tally_with_cuts(other_router, too_late, before))
    assert (checked["streams_cut_by_router_kills"], checked["passed"]) == (0, False)
