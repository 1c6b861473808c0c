"""Prints what radixfair components install, one per line, from their pyproject.toml files.

The images install the third-party requirements in layers of their own, before radixfair's
sources are seen, so a source change re-runs only radixfair's own install; and
scripts/container_engine.sh fills its local wheelhouse with the same list. The pyproject files stay
the one place that names the dependencies. PACKAGES below mirrors scripts/install_service.sh (which
package directories, with which extras, each component installs; tests/deploy checks the two agree).

usage: python third_party_requirements.py [--root DIR] [--variant cpu|cuda] [--print WHAT]
                                           [--build-requires] COMPONENT...
  COMPONENT: common, router, engine_stack, worker or distiller (what scripts/install_service.sh
  installs for it: engine_stack is its install_engine_stack, what the worker and the distiller
  both run on, the model format with its GGUF-conversion extra and the engine; every package's
  gpu extra for --variant cuda);
  --print third-party (default): the requirements that are not radixfair packages, as written;
          build: the packages' build-system requirements;
          own: radixfair's own packages by name, with their extras (`pip install` them from the
               wheels the image builds once);
          sources: the package directories under --root (what `pip wheel` builds);
  --build-requires adds the build-system requirements to the third-party list (the wheelhouse
  needs both).

A new radixfair package (a directory with a pyproject.toml) is one more entry in PACKAGES for the
components that install it, plus its pyproject in the Dockerfile's manifests stage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

# (pyproject directory, extras) of each component, mirroring scripts/install_service.sh.
# The model format's convert extra (gguf, transformers) converts the worker's packaged model and
# the distiller's teacher; the distiller installs no worker.
ENGINE_STACK = (("common", ()), ("model_format", ("convert",)), ("engine", ()))
PACKAGES = {
    "common": (("common", ()),),
    "router": (("common", ()), ("services/router", ())),
    "engine_stack": ENGINE_STACK,
    "worker": (*ENGINE_STACK, ("services/worker", ())),
    "distiller": (*ENGINE_STACK, ("services/distiller", ())),
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


def own_requirements(root: Path, components: list[str], variant: str) -> list[str]:
    """radixfair's own packages the components install, by project name with their extras."""
    requirements: dict[str, list[str]] = {}
    for component in components:
        for directory, extras in PACKAGES[component]:
            project = tomllib.loads((root / directory / "pyproject.toml").read_text())["project"]
            chosen = list(extras)
            if variant == "cuda" and GPU_EXTRA in project.get("optional-dependencies", {}):
                chosen.append(GPU_EXTRA)
            merged = requirements.setdefault(project["name"], [])
            merged.extend(e for e in chosen if e not in merged)
    return [f"{name}[{','.join(extras)}]" if extras else name for name, extras in requirements.items()]


def source_directories(root: Path, components: list[str]) -> list[str]:
    """The package directories the components install under ``root``, each once, in install order."""
    return [
        str(root / d) for d in dict.fromkeys(directory for c in components for directory, _ in PACKAGES[c])
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--variant", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--print", dest="what", choices=("third-party", "build", "own", "sources"))
    parser.add_argument(
        "--build-requires", action="store_true", help="also print what building the packages needs"
    )
    parser.add_argument("components", nargs="+", choices=sorted(PACKAGES))
    args = parser.parse_args(argv)
    if args.what == "build":
        lines = build_requirements(args.root, args.components)
    elif args.what == "own":
        lines = own_requirements(args.root, args.components, args.variant)
    elif args.what == "sources":
        lines = source_directories(args.root, args.components)
    else:
        lines = third_party(args.root, args.components, args.variant)
        if args.build_requires:
            lines += build_requirements(args.root, args.components)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
