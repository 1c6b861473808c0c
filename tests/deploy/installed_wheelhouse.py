"""A local wheelhouse for an install test, made from the distributions this environment already has.

scripts/setup_env.sh installed every third-party package the router needs into .venv, at the
versions constraints.txt pins. Packing those back into wheels lets pip install a fresh environment
with no index (PIP_NO_INDEX): pip still resolves every requirement itself, against only these
wheels, so a dependency the set lacks (torch, say) fails the install instead of passing unseen.
Resolving against an index instead costs most of a minute of downloads and index pages.

Only a build tool the environment does not hold (grpcio-tools, the shared package's stub compiler)
is downloaded, alone and without its dependencies.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Files an installer writes into .dist-info; a wheel carries none of them (RECORD is written anew).
_INSTALLER_FILES = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def project_requirements(*project_dirs: Path) -> tuple[list[Requirement], set[str]]:
    """Every dependency and build requirement of these source projects, and the projects' own names."""
    requirements: list[Requirement] = []
    names: set[str] = set()
    for project_dir in project_dirs:
        pyproject = tomllib.loads((project_dir / "pyproject.toml").read_text())
        names.add(canonicalize_name(pyproject["project"]["name"]))
        requirements += map(Requirement, pyproject["build-system"]["requires"])
        requirements += map(Requirement, pyproject["project"].get("dependencies", []))
    return requirements, names


def fill_wheelhouse(
    wheelhouse: Path, requirements: Iterable[Requirement], built_from_source: set[str], constraints: Path
) -> None:
    """Packs every installed distribution the requirements reach, transitively, into ``wheelhouse``.

    ``built_from_source``: names pip builds from the repository (never packed). A requirement that
    is not installed here is downloaded (``--no-deps``: its own requirements are walked here).
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    pending = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    packed: dict[str, list[str]] = {name: [] for name in built_from_source}  # name -> its Requires-Dist
    walked: set[tuple[str, str]] = set()  # (name, extra): a requirement with extras reaches more
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name not in packed:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                packed[name] = _download(name, wheelhouse, constraints)
            else:
                _pack(dist, wheelhouse)
                packed[name] = dist.requires or []
        if name in built_from_source:
            continue
        for extra in {"", *requirement.extras} - {e for n, e in walked if n == name}:
            walked.add((name, extra))
            for text in packed[name]:
                dependency = Requirement(text)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    pending.append(dependency)


def _download(name: str, wheelhouse: Path, constraints: Path) -> list[str]:
    """The one wheel of ``name`` that constraints.txt allows, from the index; its Requires-Dist."""
    before = set(wheelhouse.iterdir())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "-c", str(constraints), "-d", str(wheelhouse), name],
        check=True,
    )  # fmt: skip
    [wheel] = set(wheelhouse.iterdir()) - before
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]


def _pack(dist: metadata.Distribution, wheelhouse: Path) -> None:
    """One installed distribution as a wheel again: its files under site-packages, its scripts as data.

    Console scripts are left out: pip writes them anew from entry_points.txt, for the new interpreter.
    Entries are stored, not compressed: the wheel lives for one install.
    """
    wheel_text = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_text.splitlines() if line.startswith("Tag:"))
    name, version = dist.metadata["Name"].replace("-", "_").replace(".", "_"), dist.version
    entry_scripts = {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}
    records: list[tuple[str, str, str]] = []
    target = wheelhouse / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for file in dist.files or []:
            path = file.as_posix()
            if "__pycache__" in path or path.endswith(".pyc"):
                continue
            if ".dist-info/" in path and path.rsplit("/", 1)[-1] in _INSTALLER_FILES:
                continue
            if path.startswith("../../../"):  # outside site-packages: the prefix's bin/, share/, ...
                rest = path.removeprefix("../../../")
                if rest.startswith("bin/"):
                    if rest.removeprefix("bin/") in entry_scripts:
                        continue
                    arcname = f"{name}-{version}.data/scripts/{rest.removeprefix('bin/')}"
                else:
                    arcname = f"{name}-{version}.data/data/{rest}"
            elif path.startswith(".."):
                continue  # nothing a wheel can say where to put
            else:
                arcname = path
            data = Path(dist.locate_file(file)).read_bytes()
            archive.writestr(_info(arcname, Path(dist.locate_file(file))), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append((arcname, f"sha256={digest}", str(len(data))))
        dist_info = next(r[0] for r in records if r[0].endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([*records, (f"{dist_info}/RECORD", "", "")])
        archive.writestr(f"{dist_info}/RECORD", buffer.getvalue())


def _info(arcname: str, source: Path) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo.from_file(source, arcname)
    info.compress_type = zipfile.ZIP_STORED
    return info
