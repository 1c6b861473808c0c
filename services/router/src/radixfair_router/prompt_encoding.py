"""Validates and tokenizes a request off the event loop, after a bounded size check.

Tokenizing is the one CPU-heavy step of the router: a 1 MB prompt takes
seconds, and run on the event loop it froze every stream and let worker
health checks time out. So the size is checked first (the prompt message's
serialized size, cheap to know, against ``forward.max_prompt_bytes``) and
the rest runs in a worker thread. The tokenizer releases the GIL while it
encodes (``PromptEncoder.encode_text``), so the loop keeps relaying streams.

A prompt of token ids is validated on the loop: there is no tokenizing, and
the hop to the thread pool and back costs more than the work (bench/results/
router_overhead_cpu_before.md: 0.31 ms of hops around 0.17 ms for 32 ids) on
the time to first token. Text is tokenized in the thread however short (4 KB
of text took 7 ms here, 1,000 ids 0.1 ms); ``INLINE_TOKEN_ID_BYTES`` bounds
the ids validated on the loop.
"""

from __future__ import annotations

import asyncio

from radixfair.errors import InvalidRequestError
from radixfair.tokenization import PromptEncoder
from radixfair.v1 import router_pb2
from radixfair_router.request_validation import ValidatedRequest, validate_request

# A token-id prompt up to this serialized size (about 5,000 ids: ~0.5 ms of checking) is validated on
# the event loop; anything else in a worker thread.
INLINE_TOKEN_ID_BYTES = 16384


def check_prompt_size(message: router_pb2.RouterServiceGenerateRequest, max_prompt_bytes: int) -> int:
    """The prompt's serialized size in bytes; InvalidRequestError above ``max_prompt_bytes``."""
    size = message.prompt.ByteSize()
    if size > max_prompt_bytes:
        raise InvalidRequestError(
            f"prompt is {size} bytes; this router accepts at most {max_prompt_bytes} bytes"
        )
    return size


async def validate_off_loop(
    message: router_pb2.RouterServiceGenerateRequest,
    encoder: PromptEncoder,
    model_name: str,
    max_prompt_bytes: int,
) -> ValidatedRequest:
    """``validate_request`` once the prompt is known to be within bounds: in a worker thread, or on the
    loop for token ids of at most ``INLINE_TOKEN_ID_BYTES``."""
    size = check_prompt_size(message, max_prompt_bytes)
    if size <= INLINE_TOKEN_ID_BYTES and message.prompt.WhichOneof("kind") == "token_ids":
        return validate_request(message, encoder, model_name)
    return await asyncio.to_thread(validate_request, message, encoder, model_name)
