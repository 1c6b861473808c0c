"""The router configs we ship admit no worker registration without a credential (issue 12, point 2).

Loads deploy/config/router.yaml with the env file compose gives the routers,
exactly as radixfair-router does, and asks the resulting authenticators who
may register a worker and who may read every tenant's state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from radixfair.auth import ApiKeyAuthenticator, RegistrationAuthenticator, bearer_metadata
from radixfair.config_loading import load_config
from radixfair.errors import PermissionDeniedError
from radixfair_router.config import RouterConfig

REPO = Path(__file__).resolve().parents[1]


def shipped_router_config() -> RouterConfig:
    keys = next(
        line.split("=", 1)[1]
        for line in (REPO / ".env.example").read_text().splitlines()
        if line.startswith("RADIXFAIR_AUTH__API_KEYS=")
    )
    return load_config(
        RouterConfig, REPO / "deploy" / "config" / "router.yaml", env={"RADIXFAIR_AUTH__API_KEYS": keys}
    )


def test_the_shipped_router_refuses_every_registration():
    config = shipped_router_config()
    registration = RegistrationAuthenticator(config.registry.registration_token, config.auth)
    callers = [None, bearer_metadata("anything"), *(bearer_metadata(k.key) for k in config.auth.api_keys)]
    for metadata in callers:
        with pytest.raises(PermissionDeniedError, match="registration is off"):
            registration.check(metadata)


def test_an_operator_flag_in_the_env_file_makes_that_key_an_operator_and_no_other():
    config = shipped_router_config()
    assert not any(k.operator for k in config.auth.api_keys)
    operator_line = "[{key: k-ops, client_id: ops, operator: true}, {key: k-alice, client_id: alice}]"
    env = {"RADIXFAIR_AUTH__API_KEYS": operator_line}
    config = load_config(RouterConfig, REPO / "deploy" / "config" / "router.yaml", env=env)
    authenticator = ApiKeyAuthenticator(config.auth)
    assert authenticator.authenticate_key("k-ops").operator
    assert not authenticator.authenticate_key("k-alice").operator
