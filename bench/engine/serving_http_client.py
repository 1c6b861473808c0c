"""The ``http`` path of bench/engine/serving_bench.py: the same cells, streamed over the router's OpenAI API.

Each client is one ``httpx.AsyncClient`` (its own HTTP/1.1 connection) sending its requests back to
back to ``POST /v1/completions`` with the cell's token-id prompt, ``stream``, ``ignore_eos`` and
``stream_options.include_usage``, and reading the server-sent events as they come. It goes through
the same router process (same workers, same Redis ledger) as the gRPC ``router`` path, so the two
rows differ by the front door only.

One SSE chunk is one router message; OpenAI's chunks carry text, not token counts, so each chunk
counts as one token for the inter-token gaps (the worker sends one token per message unless it
coalesces under load), and the request's token count is the final usage's ``completion_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx

from bench.engine.serving_clients import (
    ClosedLoop,
    RequestRecord,
    RequestSpec,
    Target,
    by_client,
    client_loop,
    run_cell,
)

_DATA = "data: "


def _request_body(spec: RequestSpec) -> dict[str, Any]:
    return {
        "prompt": spec.prompt,
        "max_tokens": spec.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": spec.request_id,
    }


async def stream_one_http(target: Target, client: httpx.AsyncClient, spec: RequestSpec) -> RequestRecord:
    key = target.keys[spec.client % len(target.keys)]
    record = RequestRecord(spec.request_id, time.monotonic())
    usage: dict[str, Any] | None = None
    try:
        async with client.stream(
            "POST",
            f"{target.address}/completions",
            json=_request_body(spec),
            headers={"Authorization": f"Bearer {key}"},
        ) as reply:
            if reply.status_code != 200:
                body = (await reply.aread()).decode(errors="replace")
                record.error = f"HTTP {reply.status_code}: {body[:200]}"
            else:
                async for line in reply.aiter_lines():
                    if not line.startswith(_DATA) or line == f"{_DATA}[DONE]":
                        continue
                    event = json.loads(line[len(_DATA) :])
                    if "error" in event:
                        record.error = f"stream error: {event['error'].get('message', '')[:200]}"
                    elif event.get("usage"):
                        usage = event["usage"]
                    elif event["choices"] and event["choices"][0]["text"]:
                        record.on_tokens(1, time.monotonic())
    except httpx.HTTPError as error:
        record.error = f"{type(error).__name__}: {error}"
    record.end = time.monotonic()
    if usage is not None and not record.error:
        record.prompt_tokens = usage["prompt_tokens"]
        record.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
        record.tokens = usage["completion_tokens"]
        record.ok = record.tokens == spec.max_tokens
        if not record.ok:
            record.error = f"completion_tokens {record.tokens}, asked for {spec.max_tokens}"
    elif not record.error:
        record.error = "stream ended without usage"
    return record


async def run_clients_http(
    target: Target, specs: Sequence[RequestSpec], ready: object = None, plan: ClosedLoop | None = None
) -> list[RequestRecord]:
    """One connection and one stream at a time per client; all clients at once."""
    clients = by_client(specs)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    sessions = {c: httpx.AsyncClient(timeout=target.timeout_s, limits=limits) for c in clients}
    try:
        if ready is not None:  # a multiprocessing barrier: start with the other client processes
            await asyncio.to_thread(ready.wait, 300)  # type: ignore[attr-defined]

        until = time.monotonic() + plan.duration_s if plan is not None else None

        async def client(index: int) -> list[RequestRecord]:
            session = sessions[index]
            return await client_loop(
                index, clients[index], plan, until, lambda spec: stream_one_http(target, session, spec)
            )

        results = await asyncio.gather(*(client(c) for c in clients))
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions.values()))
    return [r for records in results for r in records]


async def run_cell_http(
    target: Target, specs: list[RequestSpec], procs: int, plan: ClosedLoop | None = None
) -> list[RequestRecord]:
    """As serving_clients.run_cell_grpc: the clients spread over ``procs`` spawned processes."""
    return await run_cell(target, specs, procs, run_clients_http, plan)


def http_vs_grpc(http: dict[str, Any], grpc_row: dict[str, Any] | None) -> dict[str, Any]:
    """The derived row's comparison of the http path with the gRPC router path on the same cell."""
    if grpc_row is None:
        return {}
    tok_s, grpc_tok_s = http.get("out_tok_s"), grpc_row.get("out_tok_s")
    ttft, grpc_ttft = http.get("ttft_p50_ms"), grpc_row.get("ttft_p50_ms")
    return {
        "http_vs_grpc_tok_s": tok_s / grpc_tok_s if tok_s and grpc_tok_s else None,
        "http_added_ttft_p50_ms": ttft - grpc_ttft if ttft is not None and grpc_ttft is not None else None,
    }
