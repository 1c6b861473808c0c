"""Builds real engines for tests and runs them to completion."""

from __future__ import annotations

import functools
from pathlib import Path

from radixfair.tokenization import PromptEncoder
from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine import Engine
from radixfair_engine.engine_builder import ServingStack, build_engine
from radixfair_engine.request import Request, SamplingConfig


@functools.cache
def prompt_encoder(model_dir: Path) -> PromptEncoder:
    """One PromptEncoder per model for the whole test run: the hundreds of engines the tests build
    would each read tokenizer.json (~0.2 s of CPU) otherwise. Encoding keeps no state between calls."""
    return PromptEncoder(model_dir)


def make_stack(model_dir: Path, policy: str = "fcfs", **engine: object) -> ServingStack:
    settings = {"num_pages": 256, "page_size": 16, "max_batched_tokens": 256, **engine}
    config = EngineConfig(scheduler=SchedulerConfig(policy=policy), **settings)
    return build_engine(config, model_dir, prompt_encoder(model_dir))


def greedy(prompt: list[int], max_tokens: int, request_id: str, client: str = "client-a", **kw) -> Request:
    return Request(request_id, client, prompt, SamplingConfig(max_tokens=max_tokens, **kw))


def run_to_completion(engine: Engine, requests: list[Request], max_steps: int = 10_000) -> None:
    for request in requests:
        engine.submit(request)
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError(f"engine still busy after {max_steps} steps")
