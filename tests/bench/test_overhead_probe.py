"""bench/engine/overhead_probe.py: how the overhead scripts cut a request's probe events into phases."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.engine.overhead_probe import request_phases, split_by_request

PHASES = [
    ("hop", "sent", "enter"),
    ("wait", "enter", "work:start"),
    ("work", "work:start", "work:end"),
    ("back", "work:end", "received"),
]


def test_requests_are_cut_at_each_entry_in_time_order_and_events_before_the_first_are_dropped():
    events = [("enter", 2.0), ("stray", 0.5), ("work:start", 2.1), ("enter", 5.0), ("work:end", 2.2)]
    assert split_by_request(events) == [
        [("enter", 2.0), ("work:start", 2.1), ("work:end", 2.2)],
        [("enter", 5.0)],
    ]


def test_a_phase_starts_at_the_first_event_of_its_name_after_the_previous_phase_ended():
    # A background "work" ran before this request's hop ended: it is not taken for this request's.
    events = [("work:start", 0.5), ("work:end", 0.7), ("enter", 1.0), ("work:start", 1.5), ("work:end", 2.5)]
    lengths, times = request_phases(PHASES, events, {"sent": 0.0, "received": 3.0})
    assert lengths == {"hop": 1000.0, "wait": 500.0, "work": 1000.0, "back": 500.0}
    assert times["work:start"] == 1.5


@given(st.lists(st.floats(0.0, 10.0), min_size=4, max_size=4).map(sorted))
def test_consecutive_phases_add_up_to_the_whole_time(marks):
    sent, enter, start, end = marks
    received = end + 1.0
    events = [("enter", enter), ("work:start", start), ("work:end", end)]
    lengths, _ = request_phases(PHASES, events, {"sent": sent, "received": received})
    assert abs(sum(lengths.values()) - 1e3 * (received - sent)) < 1e-6
