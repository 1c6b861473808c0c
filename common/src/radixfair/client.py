"""A small typed asyncio client for the router, over the generated stubs.

    async with RouterClient("127.0.0.1:50051", api_key="...") as client:
        async for delta in client.stream("Hello", max_tokens=32):
            print(delta.text, end="")
        output = await client.generate([ChatTurn("user", "Hi")], max_tokens=16)

A call that fails with UNAVAILABLE before its first message is retried with
backoff (nothing was generated, so nothing is repeated). Once output has
flowed, an error is the caller's to see: a retry would repeat text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Tracer

from radixfair.auth import bearer_metadata
from radixfair.tls import TlsConfig, open_aio_channel
from radixfair.tokenization import ChatTurn
from radixfair.tracing import inject_metadata
from radixfair.v1 import generation_pb2, router_pb2, router_pb2_grpc

PromptInput = str | Sequence[ChatTurn] | Sequence[int]


@dataclass(frozen=True)
class ClientConfig:
    address: str
    api_key: str
    # Attempts for a call that gets UNAVAILABLE before any output.
    max_attempts: int = 3
    retry_backoff_s: float = 0.2
    # Deadline of one whole generation; None means no deadline.
    timeout_s: float | None = None
    # TLS to the router: ca_file (the CA the router's certificate chains to) and, for a router
    # that requires client certificates, cert_file and key_file. Off: plaintext.
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass
class GenerationOutput:
    """A finished generation: the text and tokens streamed, and the final result."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    result: generation_pb2.GenerationResult | None = None


class RouterClient:
    """Streaming generation, status, with retries before the first token."""

    def __init__(self, config: ClientConfig, tracer: Tracer | None = None) -> None:
        self._config = config
        self._tracer = tracer
        self._channel = open_aio_channel(config.address, config.tls, "client tls")
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    @classmethod
    def connect(cls, address: str, api_key: str, **options: object) -> RouterClient:
        return cls(ClientConfig(address, api_key, **options))  # type: ignore[arg-type]

    async def __aenter__(self) -> RouterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def stream(
        self, prompt: PromptInput, *, request_id: str = "", model: str = "", **sampling: object
    ) -> AsyncIterator[router_pb2.RouterServiceGenerateResponse]:
        """Yields the router's messages: deltas, then one result."""
        request = router_pb2.RouterServiceGenerateRequest(
            request_id=request_id,
            prompt=build_prompt(prompt),
            sampling=build_sampling(**sampling),
            model=model,
        )
        span = None
        if self._tracer is not None:
            span = self._tracer.start_span("client.generate", kind=trace.SpanKind.CLIENT)
            span.set_attribute("gen_ai.operation.name", "text_completion")
        try:
            metadata = self._metadata(span)
            for attempt in range(1, self._config.max_attempts + 1):
                received = False
                call = self._stub.Generate(request, metadata=metadata, timeout=self._config.timeout_s)
                try:
                    async for message in call:
                        received = True
                        yield message
                    return
                except grpc.aio.AioRpcError as error:
                    retry = error.code() == grpc.StatusCode.UNAVAILABLE and not received
                    if not retry or attempt == self._config.max_attempts:
                        if span is not None:
                            span.set_status(trace.Status(trace.StatusCode.ERROR, error.details() or ""))
                        raise
                finally:
                    call.cancel()
                await asyncio.sleep(self._config.retry_backoff_s * attempt)
        finally:
            if span is not None:
                span.end()

    async def generate(self, prompt: PromptInput, **options: object) -> GenerationOutput:
        output = GenerationOutput()
        async for message in self.stream(prompt, **options):  # type: ignore[arg-type]
            if message.HasField("delta"):
                output.text += message.delta.text
                output.token_ids.extend(message.delta.token_ids)
            elif message.HasField("result"):
                output.result = message.result
        return output

    async def status(self) -> router_pb2.GetStatusResponse:
        return await self._stub.GetStatus(
            router_pb2.GetStatusRequest(),
            metadata=self._metadata(None),
            timeout=self._config.timeout_s or 10.0,
        )

    def _metadata(self, span: trace.Span | None) -> list[tuple[str, str]]:
        metadata = bearer_metadata(self._config.api_key)
        if span is None:
            return metadata
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return inject_metadata(metadata)
        finally:
            otel_context.detach(token)


def build_prompt(prompt: PromptInput) -> generation_pb2.Prompt:
    if isinstance(prompt, str):
        return generation_pb2.Prompt(text=prompt)
    items = list(prompt)
    if items and all(isinstance(t, ChatTurn) for t in items):
        messages = [generation_pb2.ChatMessage(role=t.role, content=t.content) for t in items]  # type: ignore[union-attr]
        return generation_pb2.Prompt(chat=generation_pb2.ChatPrompt(messages=messages))
    if all(isinstance(t, int) for t in items):
        return generation_pb2.Prompt(token_ids=generation_pb2.TokenIds(ids=items))  # type: ignore[arg-type]
    raise TypeError("prompt must be a string, a list of ChatTurn, or a list of token ids")


def build_sampling(
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
) -> generation_pb2.SamplingParams:
    params = generation_pb2.SamplingParams(
        temperature=temperature,
        top_k=top_k,
        stop=list(stop),
        stop_token_ids=list(stop_token_ids),
        ignore_eos=ignore_eos,
    )
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if top_p is not None:
        params.top_p = top_p
    if seed is not None:
        params.seed = seed
    return params
