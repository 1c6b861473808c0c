"""The distiller imports no service, the router included (issue 17.5).

tests/test_package_imports.py holds the distiller away from the worker; this holds it away from
every other service too, with the same ast walk over its sources.
"""

from __future__ import annotations

from test_package_imports import SERVICES, imported_modules


def test_the_distiller_imports_no_other_service() -> None:
    imports = imported_modules("distiller")
    others = [service for service in SERVICES if service != "radixfair_distiller"]

    assert {service: imports[service] for service in others if service in imports} == {}
    assert "radixfair_distiller" in imports  # the walk read the distiller's own sources
