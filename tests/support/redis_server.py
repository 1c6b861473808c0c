"""A real redis-server per test session, and throwaway ones for outage tests."""

from __future__ import annotations

import redis

from radixfair.redis_launcher import RedisServer


def flush(url: str) -> None:
    """Empties the server so each test starts from a blank ledger."""
    with redis.Redis.from_url(url) as client:
        client.flushall()


__all__ = ["RedisServer", "flush"]
