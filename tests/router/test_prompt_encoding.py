"""Tokenizing runs off the router's event loop, after a bounded size check (issue 11)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.router_stack import client_for, router_config, running_router
from tokenizers import Tokenizer

from radixfair.tokenization import PromptEncoder
from radixfair.v1 import generation_pb2, router_pb2
from radixfair_router.prompt_encoding import validate_off_loop


def text_request(text: str) -> router_pb2.RouterServiceGenerateRequest:
    return router_pb2.RouterServiceGenerateRequest(prompt=generation_pb2.Prompt(text=text))


def test_the_event_loop_keeps_running_while_a_large_prompt_is_tokenized(tiny_model_dir):
    encoder = PromptEncoder(tiny_model_dir)
    text = "The keeper climbs the stairs, trims the wick and polishes the lens. " * 6000  # ~400 KB

    async def scenario():
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        validated = await validate_off_loop(text_request(text), encoder, "", max_prompt_bytes=1 << 20)
        during = ticks - before
        done = True
        await ticking
        return validated, during

    validated, during = asyncio.run(scenario())
    # On the loop, the encode would have run start to end with no other task in between.
    assert during >= 50
    assert list(validated.token_ids) == encoder.encode_text(text)


@pytest.fixture(scope="module")
def encoder_and_reference(tiny_model_dir) -> tuple[PromptEncoder, Tokenizer]:
    return PromptEncoder(tiny_model_dir), Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


@settings(max_examples=60)
@given(text=st.text(min_size=1, max_size=200))
def test_the_encoder_tokenizes_exactly_as_the_tokenizer_does_one_text_at_a_time(encoder_and_reference, text):
    encoder, reference = encoder_and_reference
    assert encoder.encode_text(text) == reference.encode(text, add_special_tokens=False).ids


def test_an_oversized_prompt_is_refused_with_invalid_argument_and_the_router_serves_on(
    two_workers, tiny_model_dir
):
    async def scenario():
        config = router_config(tiny_model_dir, two_workers)
        config = replace(config, forward=replace(config.forward, max_prompt_bytes=2000))
        async with running_router(config) as running:
            async with client_for(running, "alice") as client:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.generate("lighthouse " * 300, max_tokens=2)
                served = await client.generate("a small lighthouse question", max_tokens=2, ignore_eos=True)
        return refused.value, served

    refused, served = asyncio.run(scenario())
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 2000 bytes" in refused.details()
    assert served.result.usage.completion_tokens == 2
