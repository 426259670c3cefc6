"""Which way labq's imports run (docs/architecture.md), read from the source
with ast: every import counts, at the top of a module or inside a function,
except those under ``if TYPE_CHECKING:``, which never run."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract", "jobs", "workers", "scheduler")

# The scheduler modules that may import ``workers``: the two backends (they run
# attempts), the spec's check of a metrics regex against the worker's own
# reader, and the API's readers of a run dir for the user (logs, artifacts,
# per-step plots).  The CLI reads through the API; the loop and everything it
# is made of are not among them.
MAY_IMPORT_WORKERS = {"scheduler.ray_backend", "scheduler.fake_backend", "scheduler.spec", "scheduler.api.files"}
LOOP = {"scheduler.loop", "scheduler.attempt_table", "scheduler.launch", "scheduler.node_view",
        "scheduler.gpu_books", "scheduler.pending_view", "scheduler.node_report", "scheduler.packing",
        "scheduler.endings", "scheduler.store", "scheduler.estimate", "scheduler.virtual_cluster"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The labq module an import of ``name`` loads (a name inside a module counts as the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> set[str]:
    return _imports_in(ast.iter_child_nodes(tree))


def _imports_in(nodes) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node):
            names |= _imports_in(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        names |= _imports(node)
    return names


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = {_owner(n) for n in _imports(ast.parse(path.read_text(), str(path)))}
        graph[name] = {t for t in targets if t and t != name}
    return graph


GRAPH = _graph()


def _external(name: str) -> set[str]:
    """Top-level packages outside labq that ``name`` imports."""
    tree = ast.parse(MODULES[name].read_text())
    return {n.split(".")[0] for n in _imports(tree)} - set(PACKAGES)


def test_the_graph_is_read():
    assert len(MODULES) > 60
    assert "scheduler.policy" in GRAPH["scheduler.loop"]
    assert "workers.node_ops" in GRAPH["scheduler.ray_backend"]


def test_no_import_cycles():
    """Tarjan's strongly connected components: every one must be a single module."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("package, may", [("contract", set()), ("jobs", {"contract"}),
                                         ("workers", {"contract", "jobs"})])
def test_lower_packages_import_only_what_is_below_them(package, may):
    wrong = {m: sorted(t for t in targets if t.split(".")[0] not in may | {package})
             for m, targets in GRAPH.items() if m.split(".")[0] == package}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_scheduler_imports_workers_only_where_named():
    importing = {m for m, targets in GRAPH.items()
                 if m.startswith("scheduler") and any(t.startswith("workers") for t in targets)}
    assert importing <= MAY_IMPORT_WORKERS
    assert not importing & LOOP


def test_the_cli_reads_only_through_the_api():
    """The CLI prints what scheduler.api returns: it never opens run dirs itself
    (so a remote CLI differs from a local one only in transport)."""
    assert not any(t.startswith("workers") for t in GRAPH["scheduler.cli"])
    assert "scheduler.api" in GRAPH["scheduler.cli"]


def test_the_loop_never_imports_workers():
    for name in LOOP:
        assert not any(t.startswith("workers") for t in GRAPH[name]), name


def test_policy_is_pure():
    """The policy package imports only itself and the standard library: no store,
    no Ray, no clock, no files."""
    policy = [m for m in MODULES if m == "scheduler.policy" or m.startswith("scheduler.policy.")]
    assert len(policy) >= 8
    for name in policy:
        assert all(t.startswith("scheduler.policy") for t in GRAPH[name]), name
        assert _external(name) <= {"__future__", "bisect", "collections", "dataclasses", "heapq", "math", "typing"}, name


def test_estimates_and_simulator_share_the_virtual_cluster_by_composition():
    assert "scheduler.simulator" not in GRAPH["scheduler.estimate"]
    assert "scheduler.virtual_cluster" in GRAPH["scheduler.estimate"]
    assert "scheduler.virtual_cluster" in GRAPH["scheduler.simulator"]


def test_type_checking_imports_are_not_counted():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import scheduler.spec\n"
                     "else:\n    import scheduler.sweep\nimport scheduler.store\n")
    assert _imports(tree) == {"typing.TYPE_CHECKING", "scheduler.sweep", "scheduler.store"}


def test_every_package_is_installed():
    """pyproject's package list covers every package directory (a subpackage
    left out imports from a checkout but not from `pip install .`)."""
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = config["packages"]  # a list, or {"find": {"include": [...]}}
    if isinstance(found, dict):
        found = find_packages(str(ROOT), include=found["find"]["include"])
    on_disk = {".".join(p.relative_to(ROOT).parent.parts) for package in PACKAGES
               for p in (ROOT / package).rglob("__init__.py")}
    assert on_disk >= {"scheduler.api", "scheduler.policy"}
    assert set(found) == on_disk


def test_the_daemons_supervisor_stays_ray_free():
    """The supervisor (scheduler.daemon, and the local Ray keeper it stops)
    never imports Ray: only the child that runs the loop does, inside _child."""
    def reaches(name: str, seen: set[str]) -> set[str]:
        if name in seen:
            return set()
        seen.add(name)
        out = {name}
        for target in GRAPH[name]:
            out |= reaches(target, seen)
        return out

    tree = ast.parse(MODULES["scheduler.daemon"].read_text())
    child = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "_child")
    outside = _imports_in(n for n in tree.body if n is not child)
    supervisor_modules = set()
    for target in {_owner(n) for n in outside} - {None}:
        supervisor_modules |= reaches(target, set())
    assert "scheduler.local_ray" in supervisor_modules
    assert "scheduler.ray_backend" not in supervisor_modules and "scheduler.loop" not in supervisor_modules
    for name in supervisor_modules | {"scheduler.daemon"}:
        imported = _external(name) if name != "scheduler.daemon" else {n.split(".")[0] for n in outside}
        assert "ray" not in imported, name
    assert "ray" in {n.split(".")[0] for n in _imports(child)} or "scheduler.ray_backend" in {
        _owner(n) for n in _imports(child)}


def _supervisor_targets() -> set[str]:
    """What scheduler.daemon imports outside ``_child`` (the process that runs the loop)."""
    tree = ast.parse(MODULES["scheduler.daemon"].read_text())
    child = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "_child")
    return {_owner(n) for n in _imports_in(n for n in tree.body if n is not child)} - {None, "scheduler.daemon"}


def _reaches(name: str, seen: set[str] | None = None) -> set[str]:
    """Every labq module importing ``name`` may load, counting only the
    daemon's supervisor (its child runs in a process of its own)."""
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out = {name}
    for target in _supervisor_targets() if name == "scheduler.daemon" else GRAPH[name]:
        out |= _reaches(target, seen)
    return out


def test_the_http_server_serves_through_the_api_and_never_runs_jobs():
    """`labq server` calls scheduler.api like the CLI does; nothing it reaches
    imports Ray, a worker that runs jobs, or the loop (a submit starts the
    daemon, a process of its own)."""
    server = [m for m in MODULES if m.startswith("scheduler.server")]
    assert {"scheduler.server.app", "scheduler.server.auth", "scheduler.server.tokens"} <= set(server)
    assert "scheduler.api" in GRAPH["scheduler.server.app"]
    reached = set().union(*(_reaches(m) for m in server))
    running = {"scheduler.loop", "scheduler.ray_backend", "workers.owner", "workers.attempt", "workers.node_ops"}
    assert not reached & running, sorted(reached & running)
    assert "scheduler.daemon" in reached  # a submit starts it
    assert not any("ray" in _external(m) for m in reached - {"scheduler.daemon"}), [
        m for m in reached if "ray" in _external(m)]


def test_the_remote_client_uses_the_standard_library_and_labqs_records():
    """`labq --server` must start fast and need nothing the server has."""
    assert _external("scheduler.remote") <= {"__future__", "json", "os", "ssl", "sys", "time", "typing", "urllib",
                                             "pathlib"}
    assert not any(t.startswith(("scheduler.store", "scheduler.server.app", "workers")) for t in
                   GRAPH["scheduler.remote"])
