"""API keys decide the client id and weight; nothing else does."""

from __future__ import annotations

import pytest

from radixfair.auth import ApiKeyAuthenticator, ApiKeyConfig, AuthConfig, key_digest
from radixfair.errors import UnauthenticatedError

AUTH = AuthConfig(
    (
        ApiKeyConfig("secret-a", "alice", 1.0),
        ApiKeyConfig(f"sha256:{key_digest('secret-b')}", "bob", 3.0),
    )
)


def test_a_bearer_key_maps_to_its_client_and_weight():
    auth = ApiKeyAuthenticator(AUTH)
    principal = auth.authenticate_metadata([("authorization", "Bearer secret-b")])
    assert (principal.client_id, principal.weight) == ("bob", 3.0)


@pytest.mark.parametrize(
    "metadata, message",
    [
        ([], "missing"),
        ([("authorization", "secret-a")], "Bearer"),
        ([("authorization", "Bearer ")], "Bearer"),
        ([("authorization", "Bearer nope")], "invalid API key"),
        ([("authorization", "Bearer secret-a"), ("authorization", "Bearer secret-b")], "more than one"),
        ([("x-client-id", "alice")], "missing"),
    ],
)
def test_calls_without_one_valid_key_are_unauthenticated(metadata, message):
    with pytest.raises(UnauthenticatedError, match=message):
        ApiKeyAuthenticator(AUTH).authenticate_metadata(metadata)


def test_a_client_with_two_weights_is_a_config_error():
    with pytest.raises(ValueError, match="different weights"):
        ApiKeyAuthenticator(AuthConfig((ApiKeyConfig("k1", "a", 1.0), ApiKeyConfig("k2", "a", 2.0))))
