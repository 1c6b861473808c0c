"""Real English text every machine has: the docstrings of Python's standard library.

Sources are parsed with ``ast`` (never imported, so no module runs), and each
module, class and function docstring of at least ``min_chars`` characters is
one document. The text differs slightly between Python versions, which the
benchmark records.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

# Test suites and the IDLE sources are mostly code and fixtures, not prose.
_SKIPPED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})


@dataclass(frozen=True)
class Document:
    # "relative/path.py::Qualified.name": stable across machines, used for the split.
    key: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path, max_files: int = 0) -> list[Path]:
    """Standard-library sources; with ``max_files`` a spread-out sample chosen by path hash."""
    files = [
        path for path in root.rglob("*.py") if not _SKIPPED_PARTS.intersection(path.relative_to(root).parts)
    ]
    files.sort(key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest())
    return files[:max_files] if max_files else files


def docstring_documents(max_files: int = 0, min_chars: int = 200, root: Path | None = None) -> list[Document]:
    root = root or stdlib_root()
    documents = []
    for path in stdlib_files(root, max_files):
        relative = str(path.relative_to(root))
        for qualname, text in _docstrings(path):
            if len(text) >= min_chars:
                documents.append(Document(f"{relative}::{qualname}", text))
    return documents


def code_documents(max_files: int = 0, root: Path | None = None) -> list[Document]:
    """Each standard-library file's source with every docstring cut out: its code and comments.

    Cutting the docstrings keeps the docstring documents (and so the held-out ones) out of this text.
    """
    root = root or stdlib_root()
    documents = []
    for path in stdlib_files(root, max_files):
        text = without_docstrings(path)
        if text and text.strip():
            documents.append(Document(f"code::{path.relative_to(root)}", text))
    return documents


def without_docstrings(path: Path) -> str | None:
    """The file's text without the lines of its module, class and function docstrings (None: unparsable)."""
    try:
        source = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    cut: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                cut.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    lines = source.splitlines(keepends=True)
    return "".join(line for number, line in enumerate(lines, start=1) if number not in cut)


def _docstrings(path: Path) -> list[tuple[str, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old sources
            tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a few stdlib files are templates or other encodings; they are not prose
    found = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        found.append(("<module>", module_doc))
    found.extend(_walk(tree, ""))
    return found


def _walk(node: ast.AST, prefix: str) -> list[tuple[str, str]]:
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{child.name}"
            doc = ast.get_docstring(child)
            if doc:
                found.append((name, doc))
            found.extend(_walk(child, f"{name}."))
    return found
