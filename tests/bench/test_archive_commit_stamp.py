"""Result pages name the commit their code came from, also when it ran from a `git archive` of it.

The GPU machine gets code as an archive inside an unrelated copy, where `git rev-parse` answers for
that copy: every page there once named the wrong commit. git writes the archived commit into
bench/ARCHIVE_COMMIT (export-subst), and bench/report.py reads it first.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def test_a_page_written_from_an_archive_names_the_archived_commit(tmp_path: Path) -> None:
    archive = git("archive", "HEAD", "bench/__init__.py", "bench/report.py", "bench/ARCHIVE_COMMIT")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path, filter="data")
    # Inside another repository, as on the GPU machine: rev-parse there would name its HEAD.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    stamp = subprocess.run(
        [sys.executable, "-c", "from bench.report import _git_commit; print(_git_commit())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert stamp == git("rev-parse", "--short", "HEAD").decode().strip()


def test_in_a_checkout_the_stamp_is_the_checkout_head() -> None:
    stamp = subprocess.run(
        [sys.executable, "-c", "from bench.report import _git_commit; print(_git_commit())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert stamp == git("rev-parse", "--short", "HEAD").decode().strip()
