"""Which radixfair package may import which: read from the sources' import statements (ast).

The engine (engine/, ``radixfair_engine``) is a library below the services: the worker serves it
and the distiller runs it in process, so neither the engine nor the distiller imports the worker.
The router and the shared package never import torch, and the router never imports the worker.
The shared package's ``radixfair up`` checks a worker's and a router's config in its own process,
so it may import a service inside a function (when the command runs), never at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = {
    "common": REPO / "common" / "src" / "radixfair",
    "model_format": REPO / "model_format" / "src" / "radixfair_model_format",
    "engine": REPO / "engine" / "src" / "radixfair_engine",
    "router": REPO / "services" / "router" / "src" / "radixfair_router",
    "distiller": REPO / "services" / "distiller" / "src" / "radixfair_distiller",
}
SERVICES = ("radixfair_worker", "radixfair_router", "radixfair_distiller")


def imported_modules(package: str, module_level_only: bool = False) -> dict[str, list[str]]:
    """Top-level names each of ``package``'s source files imports, with the line ("file:line name")."""
    found: dict[str, list[str]] = {}
    for path in sorted(SOURCES[package].rglob("*.py")):
        if "v1" in path.relative_to(SOURCES[package]).parts:
            continue  # the generated gRPC stubs
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                found.setdefault(name.split(".")[0], []).append(where)
    return found


@pytest.mark.parametrize("package", ["engine", "model_format", "distiller", "router"])
def test_no_library_and_no_other_service_imports_the_worker(package: str) -> None:
    assert imported_modules(package).get("radixfair_worker", []) == []


@pytest.mark.parametrize("package", ["engine", "model_format"])
def test_the_engine_and_the_model_format_import_no_service(package: str) -> None:
    imports = imported_modules(package)

    assert {service: imports[service] for service in SERVICES if service in imports} == {}


def test_the_shared_package_imports_no_service_at_module_level() -> None:
    imports = imported_modules("common", module_level_only=True)

    assert {service: imports[service] for service in SERVICES if service in imports} == {}


@pytest.mark.parametrize("package", ["common", "router"])
def test_the_router_and_the_shared_package_never_import_torch(package: str) -> None:
    imports = imported_modules(package)

    assert {name: imports[name] for name in ("torch", "triton") if name in imports} == {}


def test_the_distiller_runs_the_engine_package() -> None:
    # The walk above would pass on an empty tree; the distiller's engine answers do import the engine.
    assert "radixfair_engine" in imported_modules("distiller")
    assert "radixfair_model_format" in imported_modules("engine")


def test_the_distiller_imports_no_other_service() -> None:
    """The distiller is a client of the engine library, never of another service (issue 17.5)."""
    imports = imported_modules("distiller")
    others = [service for service in SERVICES if service != "radixfair_distiller"]
    assert {service: imports[service] for service in others if service in imports} == {}
    assert "radixfair_distiller" in imports  # the walk read the distiller's own sources
