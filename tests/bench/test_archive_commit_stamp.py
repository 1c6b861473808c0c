"""Result pages name the commit their code came from, also when it ran from a `git archive` of it.

The GPU machine gets code as an archive inside an unrelated copy, where `git rev-parse` answers for
that copy: every page there once named the wrong commit. git writes the archived commit into
bench/ARCHIVE_COMMIT (export-subst), and bench/report.py reads it first.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def stamp_in(directory: Path) -> str:
    """The commit stamp a page written from ``directory`` gets (bench.report imported from there)."""
    return subprocess.run(
        [sys.executable, "-c", "from bench.report import git_commit; print(git_commit())"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_a_page_written_from_an_archive_names_the_archived_commit(tmp_path: Path) -> None:
    archive = git("archive", "HEAD", "bench/__init__.py", "bench/report.py", "bench/ARCHIVE_COMMIT")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    # Inside another repository, as on the GPU machine: rev-parse there would name its HEAD.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    stamp = stamp_in(tmp_path)
    assert stamp == git("rev-parse", "--short", "HEAD").decode().strip()


def test_in_a_checkout_the_stamp_is_the_checkout_head() -> None:
    stamp = stamp_in(ROOT)
    changed = git(
        "status", "--porcelain", "--untracked-files=no", "--", ":(top,exclude)bench/results"
    ).strip()
    assert stamp == git("rev-parse", "--short", "HEAD").decode().strip() + ("+changes" if changed else "")


def test_a_checkout_whose_tracked_files_differ_from_head_says_so(tmp_path: Path) -> None:
    # As on the GPU machine: the working tree is newer than the repository metadata it came with.
    (tmp_path / "bench").mkdir()
    for name in ("__init__.py", "report.py", "ARCHIVE_COMMIT"):  # the files as they are, not HEAD's
        shutil.copy(ROOT / "bench" / name, tmp_path / "bench" / name)
    for args in (
        ["init", "-q"],
        ["add", "."],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()

    assert stamp_in(tmp_path) == head
    # A page written by a run is output, not code: the stamp stays.
    (tmp_path / "bench" / "results").mkdir()
    (tmp_path / "bench" / "results" / "page.md").write_text("first\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "page"],
        cwd=tmp_path,
        check=True,
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / "bench" / "results" / "page.md").write_text("rewritten by a run\n")
    assert stamp_in(tmp_path) == head
    (tmp_path / "bench" / "__init__.py").write_text("# changed after the commit\n")
    assert stamp_in(tmp_path) == f"{head}+changes"
