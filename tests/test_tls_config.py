"""TlsConfig through the services' config path: every combination of settings either loads with its
rules kept or is refused as one ConfigError; files are read when credentials are made, with the
field and path named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.certificates import CertificateAuthority

from radixfair.config_loading import ConfigError, load_config
from radixfair.tls import TlsError, channel_credentials, server_credentials
from radixfair_worker.config import WorkerConfig

FIELDS = ("cert_file", "key_file", "ca_file")


@given(
    present=st.fixed_dictionaries({name: st.booleans() for name in FIELDS}),
    require_client_cert=st.booleans(),
    section=st.sampled_from(["tls", "router_tls"]),
)
def test_any_tls_settings_load_with_their_rules_kept_or_are_one_config_error(
    present: dict[str, bool], require_client_cert: bool, section: str
) -> None:
    settings: dict[str, object] = {
        f"{section}.{name}": f"/etc/x/{name}.pem" for name, on in present.items() if on
    }
    settings[f"{section}.require_client_cert"] = require_client_cert

    try:
        config = load_config(WorkerConfig, None, env={}, overrides=settings)
    except ConfigError as error:
        assert str(error).startswith(f"config.{section}: ") and "\n" not in str(error)
        broken_pair = present["cert_file"] != present["key_file"]
        assert broken_pair or (require_client_cert and not present["ca_file"])
        return
    tls = getattr(config, section)
    assert bool(tls.cert_file) == bool(tls.key_file)
    assert tls.ca_file or not tls.require_client_cert
    assert tls.enabled == (present["cert_file"] or present["ca_file"])


def test_a_file_that_is_not_pem_is_named_with_its_field(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    identity = ca.issue("server", server=True)
    not_a_certificate = tmp_path / "notes.txt"
    not_a_certificate.write_text("hello")
    tls = load_config(
        WorkerConfig,
        None,
        env={},
        overrides={"tls.cert_file": str(identity.cert), "tls.key_file": str(identity.key),
                   "tls.ca_file": str(not_a_certificate)},
    ).tls  # fmt: skip

    with pytest.raises(TlsError, match=f"^tls.ca_file {not_a_certificate}: not a PEM certificate$"):
        server_credentials(tls, "tls")


def test_a_certificate_given_as_the_key_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    identity = ca.issue("client", server=False)
    tls = load_config(
        WorkerConfig,
        None,
        env={},
        overrides={"router_tls.cert_file": str(identity.cert), "router_tls.key_file": str(identity.cert)},
    ).router_tls

    with pytest.raises(TlsError, match=f"^router_tls.key_file {identity.cert}: not a PEM private key$"):
        channel_credentials(tls, "router_tls")


def test_plaintext_when_no_file_is_set() -> None:
    config = load_config(WorkerConfig, None, env={})

    assert server_credentials(config.tls) is None and channel_credentials(config.router_tls) is None
    assert config.host == "127.0.0.1"
