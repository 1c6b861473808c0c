"""Prints the third-party requirements of radixfair components, one per line, from their pyproject.toml.

The images install these in layers of their own, before radixfair's sources are copied in, so a
source change re-runs only radixfair's own install (scripts/install_service.sh); and
scripts/container_engine.sh fills its local wheelhouse with the same list. The pyproject files stay
the one place that names the dependencies: radixfair's own packages are left out (the install
script installs them from source), everything else is printed as written there.

usage: python third_party_requirements.py [--root DIR] [--variant cpu|cuda] [--build-requires] COMPONENT...
  COMPONENT: router, worker or distiller (what scripts/install_service.sh installs for it,
  with the worker's GGUF-conversion extra, and its gpu extra for --variant cuda);
  --build-requires adds the packages' build-system requirements (the wheelhouse needs them).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# (pyproject directory, extras) of each component, mirroring scripts/install_service.sh.
PACKAGES = {
    "router": (("common", ()), ("services/router", ())),
    "worker": (("common", ()), ("model_format", ()), ("services/worker", ("convert",))),
    "distiller": (
        ("common", ()),
        ("model_format", ()),
        ("services/worker", ("convert",)),
        ("services/distiller", ()),
    ),
}
GPU_EXTRA = "gpu"


def requirement_name(requirement: str) -> str:
    """The normalized project name a requirement string starts with (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def third_party(root: Path, components: list[str], variant: str) -> list[str]:
    """Sorted, de-duplicated requirements of ``components`` that are not radixfair packages."""
    projects = {directory: extras for c in components for directory, extras in PACKAGES[c]}
    pyprojects = {d: tomllib.loads((root / d / "pyproject.toml").read_text())["project"] for d in projects}
    own = {requirement_name(project["name"]) for project in pyprojects.values()}
    requirements: set[str] = set()
    for directory, project in pyprojects.items():
        extras = list(projects[directory])
        if variant == "cuda" and GPU_EXTRA in project.get("optional-dependencies", {}):
            extras.append(GPU_EXTRA)
        requirements.update(project.get("dependencies", []))
        for extra in extras:
            requirements.update(project["optional-dependencies"][extra])
    return sorted(r for r in requirements if requirement_name(r) not in own)


def build_requirements(root: Path, components: list[str]) -> list[str]:
    """Sorted build-system requirements of the components' packages (what pip's isolated builds fetch)."""
    directories = {directory for c in components for directory, _ in PACKAGES[c]}
    requires = {
        r
        for d in directories
        for r in tomllib.loads((root / d / "pyproject.toml").read_text())["build-system"]["requires"]
    }
    return sorted(requires)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--variant", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--build-requires", action="store_true", help="also print what building the packages needs"
    )
    parser.add_argument("components", nargs="+", choices=sorted(PACKAGES))
    args = parser.parse_args(argv)
    requirements = third_party(args.root, args.components, args.variant)
    if args.build_requires:
        requirements += build_requirements(args.root, args.components)
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
