"""The tenant identity a router vouches for on each request it forwards to a worker.

A worker charges and schedules by the ``client_id`` and ``client_weight`` in a
request. Anyone who reaches a worker's port could otherwise claim any tenant
and any weight. With a secret shared by the routers and the workers, the
router signs (HMAC-SHA256) the identity together with its own request id, and
the worker serves only requests whose signature matches. Binding the request
id (unique per request, made by the router) means a signature cannot be
moved to another identity or weight; a captured request can be replayed only
as itself, which TLS on the router -> worker hop prevents.
"""

from __future__ import annotations

import hashlib
import hmac
import json

# Metadata key of the signature on a router -> worker Generate call.
IDENTITY_SIGNATURE_KEY = "x-radixfair-identity-signature"
_DOMAIN = "radixfair-identity-v1"


def identity_signature(secret: str, client_id: str, client_weight: float, request_id: str) -> str:
    """Hex HMAC-SHA256 of the identity as the worker receives it (``client_weight`` as its double)."""
    # JSON of a list: unambiguous for any characters in the ids, and the same float repr on both sides.
    message = json.dumps([_DOMAIN, client_id, float(client_weight), request_id], separators=(",", ":"))
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def identity_valid(
    secret: str, client_id: str, client_weight: float, request_id: str, signature: str
) -> bool:
    expected = identity_signature(secret, client_id, client_weight, request_id)
    # As bytes: compare_digest refuses str with non-ASCII characters, which a caller may send.
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))
