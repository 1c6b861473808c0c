"""The official ``openai`` SDK against a real router and worker on loopback, over the router's HTTP API.

Chat and text completions, streamed and not, usage with cached prompt tokens, stop strings, seeds,
and the SDK's own error classes for a wrong key, a prompt longer than the context, a field
radixfair cannot honour and a model nobody serves. The requests go through the router's one
dispatch path: the ledger books them to the tenant of the key.
"""

from __future__ import annotations

import itertools

import openai
import pytest
from support.http_router import http_router
from support.router_stack import CLIENTS, WORKER_SETTINGS

PAGE = int(WORKER_SETTINGS["engine.page_size"])
_unique = itertools.count()


def fresh_text(words: int = 12) -> str:
    """A prompt no other request sent (the workers are shared with other tests): nothing of it is cached."""
    n = next(_unique)
    return " ".join(f"http{n}q{i}" for i in range(words))


@pytest.fixture(scope="module")
def api(tiny_model_dir, two_workers):
    with http_router(tiny_model_dir, two_workers) as router:
        yield router


def sdk(api, client_id: str = "alice", key: str | None = None) -> openai.OpenAI:
    # No retries: each call is one request, so an error reaches the test as the router answered it.
    return openai.OpenAI(
        base_url=api.base_url, api_key=key or CLIENTS[client_id][0], max_retries=0, timeout=120
    )


@pytest.fixture(scope="module")
def model(api) -> str:
    return sdk(api).models.list().data[0].id


def test_models_lists_the_model_the_healthy_worker_serves(api, tiny_model_dir):
    assert [m.id for m in sdk(api).models.list().data] == [tiny_model_dir.name]


def test_chat_completion_answers_with_the_assistant_message_finish_reason_and_usage(api, model):
    reply = sdk(api).chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": fresh_text()}],
        max_completion_tokens=5,
        temperature=0,
        user="end-user-7",
    )
    [choice] = reply.choices
    assert reply.object == "chat.completion" and reply.model == model
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    usage = reply.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    # A random tiny model rarely ends on its own: it stops at the budget, or on a stop token before.
    assert (choice.finish_reason, usage.completion_tokens) == ("length", 5) or (
        choice.finish_reason == "stop" and usage.completion_tokens < 5
    )


def test_text_completion_answers_with_text_finish_reason_and_usage(api, model):
    reply = sdk(api).completions.create(model=model, prompt=fresh_text(), max_tokens=4, temperature=0)
    [choice] = reply.choices
    assert reply.object == "text_completion" and isinstance(choice.text, str)
    assert choice.finish_reason in ("length", "stop")
    assert reply.usage.prompt_tokens > 12
    assert reply.usage.completion_tokens <= 4


def test_a_repeated_prefix_reports_cached_tokens_and_the_ledger_books_them_to_the_key(api, model):
    client = sdk(api, "carol")
    prompt = fresh_text(40)
    first = client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=model, prompt=prompt + " and more", max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The router sends the second to the worker holding the first (the longest prefix match); that
    # worker cached whole pages of the first prompt, and the second reuses all of them but the
    # page that holds the first prompt's last token at most.
    assert first.usage.prompt_tokens - PAGE <= cached <= first.usage.prompt_tokens
    api.call(api.running.router.drain())
    [carol] = [r for r in api.call(api.running.ledger.snapshot()) if r.client_id == "carol"]
    replies = (first, second)
    assert carol.requests == 2 and carol.inflight == 0
    assert carol.prompt_tokens == sum(r.usage.prompt_tokens for r in replies)
    assert carol.cached_tokens == cached
    assert carol.completion_tokens == sum(r.usage.completion_tokens for r in replies)


def warm(client: openai.OpenAI, model: str, prompt: str) -> None:
    """Caches the prompt first, so the requests compared after it all see the same cached prefix."""
    client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0)


def test_a_streamed_chat_reply_equals_the_unstreamed_one_for_the_same_seed(api, model):
    client = sdk(api)
    messages = [{"role": "user", "content": fresh_text()}]
    options = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 1.0, "seed": 321}
    client.chat.completions.create(**{**options, "max_tokens": 1})  # warm the cache
    whole = client.chat.completions.create(**options)
    chunks = list(
        client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True})
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_a_streamed_completion_equals_the_unstreamed_one_for_the_same_seed(api, model):
    client = sdk(api)
    prompt = fresh_text()
    warm(client, model, prompt)
    options = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0.8, "seed": 99}
    whole = client.completions.create(**options)
    chunks = list(client.completions.create(**options, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_the_same_seed_samples_the_same_text_and_different_seeds_do_not_all_agree(api, model):
    client = sdk(api)
    prompt = fresh_text()
    warm(client, model, prompt)

    def sample(seed: int) -> str:
        reply = client.completions.create(
            model=model, prompt=prompt, max_tokens=8, temperature=1.0, seed=seed
        )
        return reply.choices[0].text

    assert sample(1234) == sample(1234)
    # At temperature 1 over a 49k-token vocabulary, four seeds all drawing the same 6 tokens would
    # mean the seed is not used at all.
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1


def test_a_stop_string_ends_the_text_before_it(api, model):
    client = sdk(api)
    prompt = fresh_text()
    warm(client, model, prompt)
    # ignore_eos: a random model's early end-of-sequence must not leave too little text to cut.
    options = {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0}
    options["extra_body"] = {"ignore_eos": True}
    free = client.completions.create(**options).choices[0].text
    assert len(free) >= 8, f"the greedy text is too short to cut: {free!r}"
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    expected = free[: free.index(stop)]
    cut = client.completions.create(**options, stop=[stop, "no-such-stop-string"])
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (expected, "stop")
    streamed = client.completions.create(**options, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_a_wrong_key_is_an_authentication_error(api, model):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(api, key="not-a-key").chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert caught.value.status_code == 401 and "invalid API key" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        sdk(api, key="not-a-key").models.list()


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_a_bad_request(api, model, stream):
    # The tiny model's context holds 1024 tokens; the worker refuses the prompt before any token.
    with pytest.raises(openai.BadRequestError) as caught:
        reply = sdk(api).completions.create(model=model, prompt="hello " * 1500, max_tokens=1, stream=stream)
        list(reply) if stream else None
    assert caught.value.status_code == 400 and "context window" in caught.value.message


def test_more_than_one_choice_is_a_bad_request_naming_n(api, model):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(api).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], n=2)
    assert "n=2" in caught.value.message


def test_a_model_no_worker_serves_is_not_found(api):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(api).completions.create(model="no-such-model", prompt="hi", max_tokens=1)
    assert "no-such-model" in caught.value.message


def test_a_prompt_of_token_ids_is_served_as_those_tokens(api, model):
    ids = [next(_unique) % 1000 + 3000 + i for i in range(9)]
    reply = sdk(api).completions.create(
        model=model, prompt=ids, max_tokens=3, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.usage.prompt_tokens == 9
    # ignore_eos (radixfair's extension, as vLLM's): exactly the budget, whatever the model samples.
    assert (reply.usage.completion_tokens, reply.choices[0].finish_reason) == (3, "length")
