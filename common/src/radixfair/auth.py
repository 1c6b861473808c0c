"""API keys and worker registration tokens: who is calling, in which role, with what weight.

The key in ``authorization: Bearer <key>`` is the only thing that decides a
caller's client id, so a caller cannot claim another tenant's identity. A
key marked ``operator`` may also read every tenant's state. Workers that
register themselves with a router prove it with a registration token, an
identity of its own: never a tenant's key, and without one configured no
caller can register a worker. Secrets are compared by their SHA-256 digest
with a constant-time compare; the configuration may hold either the secret
itself or its digest (``sha256:<hex>``), so a deployed config need not
contain secrets.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from radixfair.errors import PermissionDeniedError, UnauthenticatedError

AUTHORIZATION_HEADER = "authorization"
_BEARER = "bearer "
_DIGEST_PREFIX = "sha256:"


@dataclass(frozen=True)
class ApiKeyConfig:
    """One key: the secret (or ``sha256:<hex>`` of it), its client id and weight.

    ``operator``: the key may read every tenant's usage and the workers'
    addresses (GetStatus); a tenant's key sees only its own state.
    """

    key: str
    client_id: str
    weight: float = 1.0
    operator: bool = False


@dataclass(frozen=True)
class AuthConfig:
    """Every tenant key a router accepts; checked whole when built, so a mistake is found when the
    config is loaded (by the router, or by ``radixfair up`` before it starts anything), not later.

    Raises ValueError for an empty key or client id, a weight that is not a positive finite number,
    a key listed twice (compared by digest, so a secret and its ``sha256:`` form collide) or one
    client with keys of different weights.
    """

    api_keys: tuple[ApiKeyConfig, ...] = ()

    def __post_init__(self) -> None:
        digests: set[str] = set()
        weights: dict[str, float] = {}
        for entry in self.api_keys:
            if not entry.key or not entry.client_id:
                raise ValueError("every api key needs a non-empty key and client_id")
            if not math.isfinite(entry.weight) or entry.weight <= 0:
                raise ValueError(f"client {entry.client_id!r}: weight must be a positive number")
            digest = _stored_digest(entry.key)
            if digest in digests:
                raise ValueError(f"api key for client {entry.client_id!r} is listed twice")
            if weights.setdefault(entry.client_id, entry.weight) != entry.weight:
                raise ValueError(f"client {entry.client_id!r} has keys with different weights")
            digests.add(digest)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    client_id: str
    weight: float
    operator: bool = False


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyAuthenticator:
    """Maps bearer keys to principals; built once from an AuthConfig."""

    def __init__(self, config: AuthConfig) -> None:
        self._by_digest: dict[str, Principal] = {}
        self._weights: dict[str, float] = {}
        # AuthConfig checked every entry when it was built.
        for entry in config.api_keys:
            digest = _stored_digest(entry.key)
            self._by_digest[digest] = Principal(entry.client_id, entry.weight, bool(entry.operator))
            self._weights[entry.client_id] = entry.weight

    def client_weights(self) -> dict[str, float]:
        return dict(self._weights)

    def authenticate_key(self, key: str) -> Principal:
        digest = key_digest(key)
        for stored, principal in self._by_digest.items():
            # Constant-time compare of digests: no early exit that leaks a prefix.
            if hmac.compare_digest(stored, digest):
                return principal
        raise UnauthenticatedError("invalid API key")

    def authenticate_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The principal of a call's ``authorization: Bearer <key>`` metadata."""
        return self.authenticate_key(bearer_token(metadata))


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The secret of a call's single ``authorization: Bearer <secret>`` metadata entry."""
    values = [v for k, v in (metadata or ()) if k.lower() == AUTHORIZATION_HEADER]
    if not values:
        raise UnauthenticatedError(
            "missing 'authorization: Bearer <api key>' (gRPC metadata, or an HTTP header)"
        )
    if len(values) > 1:
        raise UnauthenticatedError("more than one authorization header")
    value = values[0]
    if not isinstance(value, str):
        raise UnauthenticatedError("authorization must be text, 'Bearer <api key>'")
    if not value.lower().startswith(_BEARER) or not value[len(_BEARER) :].strip():
        raise UnauthenticatedError("authorization must be 'Bearer <api key>'")
    return value[len(_BEARER) :].strip()


class RegistrationAuthenticator:
    """Checks the token a worker sends with RegisterWorker.

    ``token`` is the secret or ``sha256:<hex>`` of it. Empty means registration
    is off: every call is refused, so a router whose config says nothing about
    registration serves only its statically listed workers. The token must not
    be any tenant's API key, so no tenant can register a worker.
    """

    def __init__(self, token: str, tenant_keys: AuthConfig) -> None:
        self._digest = _stored_digest(token) if token else ""
        if self._digest and any(_stored_digest(k.key) == self._digest for k in tenant_keys.api_keys):
            raise ValueError("the worker registration token must not be a tenant's API key")

    @property
    def enabled(self) -> bool:
        return bool(self._digest)

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        if not self._digest:
            raise PermissionDeniedError(
                "worker registration is off on this router: no registry.registration_token is configured"
            )
        if not hmac.compare_digest(key_digest(bearer_token(metadata)), self._digest):
            raise UnauthenticatedError("invalid worker registration token")


def bearer_metadata(api_key: str) -> list[tuple[str, str]]:
    return [(AUTHORIZATION_HEADER, f"Bearer {api_key}")]


def _stored_digest(key: str) -> str:
    if key.startswith(_DIGEST_PREFIX):
        digest = key[len(_DIGEST_PREFIX) :].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("a 'sha256:' key must be followed by 64 hex digits")
        return digest
    return key_digest(key)


def parse_api_keys(entries: Sequence[dict[str, object]]) -> AuthConfig:
    """AuthConfig from plain mappings (CLI flags, tests)."""
    return AuthConfig(
        api_keys=tuple(
            ApiKeyConfig(
                str(e["key"]),
                str(e["client_id"]),
                float(e.get("weight", 1.0)),  # type: ignore[arg-type]
                operator=bool(e.get("operator", False)),
            )
            for e in entries
        )
    )
