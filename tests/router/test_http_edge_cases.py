"""Hostile and odd bodies against a real router + worker: a clear 4xx in OpenAI's error shape, never a 500.

Found by using the HTTP API as a new user and then as an attacker (issue 16): JSON's "\\ud800"
escapes (a lone surrogate no UTF-8 spells) reached the protobuf encoder and came back as 500s,
a deeply nested body blew the JSON decoder's stack (500), a refused field's value was echoed
back whole (a megabyte in, a megabyte of error out), lax coercion read "yes" as a boolean
and ``true`` as token id 1, and a reply to a request without ``model`` named no model.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.http_router import http_router
from support.router_stack import CLIENTS

AUTH = {"Authorization": f"Bearer {CLIENTS['alice'][0]}", "Content-Type": "application/json"}
# Every field both endpoints read, plus each endpoint's own: the fuzz puts anything JSON can hold there.
_COMMON_FIELDS = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "user",
    "ignore_eos",
    "n",
    "logprobs",
    "logit_bias",
)


@pytest.fixture(scope="module")
def api(tiny_model_dir, two_workers):
    with http_router(tiny_model_dir, two_workers) as router:
        yield router


def post(api, path: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{api.base_url}{path}", content=body, headers=AUTH, timeout=120)


def assert_openai_400(reply: httpx.Response, named: str) -> None:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and named in error["message"], error


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/completions", {"prompt": "\ud800 lone", "max_tokens": 1}, "prompt.str: holds a lone UTF-16"),
        ("/completions", {"prompt": "hi", "stop": "\udfff", "max_tokens": 1}, "stop.str: holds a lone"),
        ("/completions", {"prompt": "hi", "stop": ["a", "\udc00"]}, "stop.list[str].1: holds a lone"),
        ("/completions", {"prompt": "hi", "user": "\ud800"}, "user: holds a lone"),
        ("/completions", {"prompt": "hi", "model": "\ud800"}, "model: holds a lone"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "a\udbff"}]}, "content.str: holds"),
        ("/chat/completions", {"messages": [{"role": "\ud800", "content": "x"}]}, "role: holds a lone"),
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]},
            "content.list[TextPart].0.text: holds a lone",
        ),
    ],
)
def test_a_lone_surrogate_in_any_text_field_is_a_400_naming_the_field(api, path, body, named):
    # json.dumps escapes the surrogate as \ud800, as a client's JSON encoder would.
    assert_openai_400(post(api, path, json.dumps(body).encode()), named)


def test_a_body_nested_deeper_than_the_decoder_allows_is_a_400(api):
    depth = 100_000
    body = b'{"prompt": "hi", "extra": ' + b"[" * depth + b"]" * depth + b"}"
    assert_openai_400(post(api, "/completions", body), "nests arrays or objects too deeply")


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("stream", "yes", "stream: Input should be a valid boolean"),
        ("max_tokens", "1", "max_tokens: Input should be a valid integer"),
        ("temperature", "0.5", "temperature: Input should be a valid number"),
        ("ignore_eos", "no", "ignore_eos: Input should be a valid boolean"),
        ("prompt", [True], "prompt.list[int].0: Input should be a valid integer"),
        ("stream_options", {"include_usage": 1}, "stream_options.include_usage"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(api, field, value, named):
    body = {"prompt": "hi", "max_tokens": 1, field: value}
    assert_openai_400(post(api, "/completions", json.dumps(body).encode()), named)


def test_a_refused_field_is_named_without_echoing_its_whole_value(api):
    body = {"prompt": "hi", "max_tokens": 1, "logit_bias": {str(i): 1 for i in range(100_000)}}
    reply = post(api, "/completions", json.dumps(body).encode())
    assert_openai_400(reply, "logit_bias={'0': 1, '1': 1")
    # The message repeats at most 80 characters of the value; the rest of the envelope is small.
    assert len(reply.content) < 1024, len(reply.content)


def test_an_integer_temperature_is_a_number_and_is_served(api):
    body = {"prompt": "hi", "max_tokens": 1, "temperature": 1}
    assert post(api, "/completions", json.dumps(body).encode()).status_code == 200


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        # JSON numbers are float64, the fields float32: the error names what the caller sent.
        ("temperature", 3.5e38, "temperature is too large for a float32 field, got 3.5e+38"),
        ("top_p", 1e-300, "top_p is too small for a float32 field (it would be 0), got 1e-300"),
        ("stop", [""], "stop strings must not be empty"),
        ("stop", [str(i) for i in range(17)], "stop takes at most 16 strings, got 17"),
    ],
)
def test_an_out_of_range_value_is_named_as_the_caller_sent_it(api, field, value, named):
    body = {"prompt": "hi", "max_tokens": 1, field: value}
    assert_openai_400(post(api, "/completions", json.dumps(body).encode()), named)


def test_a_reply_to_a_request_without_model_names_the_model_the_workers_serve(api):
    served = httpx.get(f"{api.base_url}/models", headers=AUTH, timeout=30).json()["data"]
    assert len(served) == 1  # both tiny workers serve the same model
    for stream in (False, True):
        body = {"prompt": "hi", "max_tokens": 1, "stream": stream}
        reply = post(api, "/completions", json.dumps(body).encode())
        assert reply.status_code == 200, reply.text
        first = reply.text.split("\n\n")[0].removeprefix("data: ") if stream else reply.text
        assert json.loads(first)["model"] == served[0]["id"]


# Anything JSON holds, lone surrogates included (hypothesis leaves category Cs out unless asked).
_TEXT = st.text(st.characters(codec=None, categories=("L", "N", "P", "Zs", "Cc", "Cs")), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    chat=st.booleans(),
    fields=st.dictionaries(st.sampled_from((*_COMMON_FIELDS, "prompt", "messages")), _JSON, max_size=3),
)
def test_any_json_in_any_field_is_answered_200_or_a_4xx_in_openai_shape_never_a_500(api, chat, fields):
    base = {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    # A budget of one token at most, so a body the fuzz gets right costs one decode step.
    body = {**base, **fields, "max_tokens": 1}
    # allow_nan: NaN and Infinity are what Python's (and JavaScript's lax) encoders send.
    reply = post(api, "/chat/completions" if chat else "/completions", json.dumps(body).encode())
    if reply.status_code == 200:
        return
    assert 400 <= reply.status_code < 500, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "n": 2}, "n"),
        ({"prompt": "hi", "max_tokens": "1"}, "max_tokens"),
        ({"prompt": "hi", "stop": 5}, "stop"),
        ({"max_tokens": 1}, "prompt"),
        (b'{"prompt": ', None),
    ],
)
def test_a_400_for_one_field_names_it_in_param_as_openai_does(api, body, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = post(api, "/completions", raw)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param, reply.text
