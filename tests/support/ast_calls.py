"""The names a piece of Python source calls, for tests that walk the code for a kind of mistake."""

from __future__ import annotations

import ast


def called_names(tree: ast.AST) -> set[str]:
    """Every name called in ``tree``: ``f(...)`` gives "f", ``x.f(...)`` gives "f"."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names
