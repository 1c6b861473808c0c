"""What the engine process keeps from the front's pipe is laid out as a freshly built object.

pickle rebuilds an ordinary instance by filling its ``__dict__``, which leaves the rebuilt object with
a materialized instance dict: CPython's specialized attribute reads then miss, and every field read
costs about twice what it costs on an object built by its constructor. The engine reads its requests'
fields for every running request every step, so an engine process stepping unpickled Requests spent
~1.6x the host time a step of the same engine in process (bench/results/engine_process_cost_h200_host.md,
null runner on the H200 host). A slotted class has no instance dict: unpickled, it is laid out exactly
as a fresh one. These tests walk what really crosses the pipe, so a new unslotted class reachable
from a submitted request fails here rather than as a slower worker.
"""

from __future__ import annotations

import enum
from multiprocessing import Pipe

import pytest

from radixfair.tokenization import PromptEncoder
from radixfair.v1 import generation_pb2, worker_pb2
from radixfair_worker.engine_protocol import SubmitRequest
from radixfair_worker.request_builder import build_request

_PLAIN = (int, float, bool, str, bytes, type(None))
_CONTAINERS = (list, tuple, set, frozenset)


def _instances_with_a_dict(root: object) -> list[str]:
    """Every object reachable from ``root`` through fields and containers that has an instance dict
    (enum members excepted: unpickling returns the class's own singletons), as "path: type"."""
    found, seen, todo = [], set(), [("request", root)]
    while todo:
        path, value = todo.pop()
        if id(value) in seen or isinstance(value, _PLAIN) or isinstance(value, enum.Enum):
            continue
        seen.add(id(value))
        if isinstance(value, _CONTAINERS):
            todo += [(f"{path}[{i}]", item) for i, item in enumerate(value)]
            continue
        if isinstance(value, dict):
            todo += [(f"{path}[{key!r}]", item) for key, item in value.items()]
            continue
        if hasattr(value, "__dict__"):
            found.append(f"{path}: {type(value).__qualname__}")
            continue
        for cls in type(value).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(value, name):
                    todo.append((f"{path}.{name}", getattr(value, name)))
    return found


def _generate_request(**sampling: object) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id="caller-label",
        client_id="tenant-a",
        client_weight=2.0,
        prompt=generation_pb2.Prompt(text="What is the capital of France?"),
        sampling=generation_pb2.SamplingParams(**sampling),
    )


@pytest.mark.parametrize(
    "sampling",
    [
        {},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 7, "max_tokens": 16},
        {"stop": ["\n\n", "END"], "stop_token_ids": [2, 3], "ignore_eos": True},
    ],
)
def test_a_request_through_the_pipe_has_no_instance_dict_anywhere(smollm2_dir, sampling) -> None:
    request = build_request(_generate_request(**sampling), PromptEncoder(smollm2_dir), "", 2048)
    front, engine = Pipe()
    try:
        front.send(SubmitRequest(request))
        received = engine.recv().request
    finally:
        front.close()
        engine.close()

    assert _instances_with_a_dict(received) == []
    # The walk looked at the fields that matter, and the pipe kept them.
    assert received.prompt_ids == request.prompt_ids and len(received.prompt_ids) > 0
    assert received.sampling == request.sampling
    assert (received.client_id, received.weight) == ("tenant-a", 2.0)


def test_the_walk_finds_an_unslotted_object_behind_a_slotted_one(smollm2_dir) -> None:
    """The check itself can fail: an ordinary object hung off a request's field is reported."""

    class Annotation:
        def __init__(self) -> None:
            self.note = "x"

    request = build_request(_generate_request(), PromptEncoder(smollm2_dir), "", 2048)
    request.locked_node = [Annotation()]  # any field will do: the walk follows every slot

    assert _instances_with_a_dict(request) == ["request.locked_node[0]: " + Annotation.__qualname__]
