"""Validates and tokenizes a request off the event loop, after a bounded size check.

Tokenizing is the one CPU-heavy step of the router: a 1 MB prompt takes
seconds, and run on the event loop it froze every stream and let worker
health checks time out. So the size is checked first (the prompt message's
serialized size, cheap to know, against ``forward.max_prompt_bytes``) and
the rest runs in a worker thread. The tokenizer releases the GIL while it
encodes (``PromptEncoder.encode_text``), so the loop keeps relaying streams.
"""

from __future__ import annotations

import asyncio

from radixfair.errors import InvalidRequestError
from radixfair.tokenization import PromptEncoder
from radixfair.v1 import router_pb2
from radixfair_router.request_validation import ValidatedRequest, validate_request


def check_prompt_size(message: router_pb2.RouterServiceGenerateRequest, max_prompt_bytes: int) -> None:
    size = message.prompt.ByteSize()
    if size > max_prompt_bytes:
        raise InvalidRequestError(
            f"prompt is {size} bytes; this router accepts at most {max_prompt_bytes} bytes"
        )


async def validate_off_loop(
    message: router_pb2.RouterServiceGenerateRequest,
    encoder: PromptEncoder,
    model_name: str,
    max_prompt_bytes: int,
) -> ValidatedRequest:
    """``validate_request`` in a worker thread, once the prompt is known to be within bounds."""
    check_prompt_size(message, max_prompt_bytes)
    return await asyncio.to_thread(validate_request, message, encoder, model_name)
