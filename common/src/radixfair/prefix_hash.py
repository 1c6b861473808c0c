"""Chained hashes of page-aligned token prefixes.

A worker's radix cache holds prefixes in whole pages. Hashing page k of a
prompt together with the hash of pages 0..k-1 gives one 64-bit number per
cached prefix, so a worker can report what it holds in a few kilobytes and a
router can tell, by hashing a new prompt the same way, how many of its pages
that worker already has. Both sides must use this one function.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence

# The hash "before" the first page: any fixed value shared by both sides.
ROOT_HASH = 0x9E3779B97F4A7C15


def chain_hash(previous: int, page: Sequence[int]) -> int:
    """Hash of one page given the hash of everything before it."""
    digest = hashlib.blake2b(struct.pack(f"<Q{len(page)}i", previous, *page), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def iter_page_hashes(token_ids: Sequence[int], page_size: int) -> Iterator[int]:
    """Yield the chained hash of each full page of ``token_ids``, in order.

    The same bytes as ``chain_hash`` page by page, but the tokens are packed once: the router
    hashes every prompt on its decision path.
    """
    if page_size <= 0:
        raise ValueError("page_size must be positive")
    previous = ROOT_HASH
    full = len(token_ids) - len(token_ids) % page_size
    packed = struct.pack(f"<{full}i", *token_ids[:full])
    page_bytes = 4 * page_size
    for start in range(0, 4 * full, page_bytes):
        header = previous.to_bytes(8, "little")
        digest = hashlib.blake2b(header + packed[start : start + page_bytes], digest_size=8).digest()
        previous = int.from_bytes(digest, "little")
        yield previous


def page_hashes(token_ids: Sequence[int], page_size: int) -> list[int]:
    return list(iter_page_hashes(token_ids, page_size))


def matched_pages(hashes: Sequence[int], cached_hashes: set[int] | frozenset[int]) -> int:
    """How many leading pages, given a prompt's chained page hashes, a holder of ``cached_hashes`` has."""
    count = 0
    for page_hash in hashes:
        if page_hash not in cached_hashes:
            break
        count += 1
    return count


def matched_prefix_tokens(
    token_ids: Sequence[int], page_size: int, cached_hashes: set[int] | frozenset[int]
) -> int:
    """How many leading tokens of ``token_ids`` a holder of ``cached_hashes`` has cached."""
    matched = 0
    for page_hash in iter_page_hashes(token_ids, page_size):
        if page_hash not in cached_hashes:
            break
        matched += page_size
    return matched
