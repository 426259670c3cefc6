"""Reading Python modules without importing them.

Submit-time checks must be fast, and importing torch or scikit-learn costs a
second or more; the names a module binds can be read from its source instead.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at import time, including inside top-level ``if`` and
    ``try`` blocks (the usual optional-import fallbacks); function bodies are not
    entered."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or type(node).__name__ == "TryStar":
            for field in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
    return names


def has_dynamic_names(tree: ast.Module) -> bool:
    """`from x import *` or a module `__getattr__` (lazy loading): the AST cannot
    tell which names exist, so a caller must import to be sure."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return True
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            return True
    return False


MISSING = "missing"


def module_source(dotted: str) -> Path | str | None:
    """The .py file of module ``dotted``, found without importing it or its
    parents; :data:`MISSING` when no such module exists; None when it exists but
    is not plain source (an extension module, a namespace package)."""
    parts = dotted.split(".")
    try:
        top = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return MISSING
    if top is None:
        return MISSING
    if len(parts) == 1:
        return Path(top.origin) if top.origin and top.origin.endswith(".py") else None
    if not top.submodule_search_locations:
        return MISSING
    base = Path(list(top.submodule_search_locations)[0])
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        if (base / part / "__init__.py").exists():
            base = base / part
            if last:
                return base / "__init__.py"
        elif last and (base / f"{part}.py").exists():
            return base / f"{part}.py"
        elif any(base.glob(f"{part}.*")) or (base / part).is_dir():
            return None  # compiled, or a namespace package: cannot tell from source
        else:
            return MISSING
    return MISSING


def defined_names(dotted: str) -> set[str] | None:
    """Names module ``dotted`` binds; None when that cannot be read from source.
    Raises ModuleNotFoundError when there is no such module."""
    path = module_source(dotted)
    if path == MISSING:
        raise ModuleNotFoundError(dotted)
    if path is None:
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    if has_dynamic_names(tree):
        return None
    return top_level_names(tree)
