"""The package's shape, checked from its source: no import cycle anywhere (imports inside
functions count too), the science free of Ray and of the orchestrator, the layers pointing one
way, and Ray start-up's one private-API workaround still valid for the pinned Ray."""

from __future__ import annotations

import ast
import os
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("localist", "orchestrator")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, f: Path) -> set[str]:
    """Every module name this file imports (`from a import b` counts as a.b when that is a module)."""
    tree = ast.parse(f.read_text())
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    package = name if f.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


MODULES = _modules()
GRAPH = {m: {t for t in _imports(m, f) if t in MODULES and t != m} for m, f in MODULES.items()}
EXTERNAL = {m: {t.split(".")[0] for t in _imports(m, f)} for m, f in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_anywhere():
    assert len(MODULES) > 30 and GRAPH["orchestrator.cli"]  # the walk found the package
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_science_imports_neither_ray_nor_the_orchestrator():
    bad = {m: sorted(EXTERNAL[m] & {"ray", "orchestrator"}) for m in MODULES if m.startswith("localist")}
    assert not {m: v for m, v in bad.items() if v}


def test_layers_point_one_way():
    """The sweep file's schema and layout know no job; analysis knows nothing of running sweeps."""
    core = ("orchestrator.spec", "orchestrator.search", "orchestrator.tracking", "orchestrator.layout")
    for m in MODULES:
        jobs = {t for t in GRAPH[m] if t.startswith(("orchestrator.sweep", "orchestrator.analysis", "orchestrator.submit",
                                                     "orchestrator.cli"))}
        if m in core:
            assert not jobs, (m, jobs)
        if m.startswith("orchestrator.analysis"):
            assert not {t for t in jobs if not t.startswith("orchestrator.analysis")}, (m, jobs)


def test_local_ray_is_kept_on_loopback_by_the_pinned_ray(monkeypatch):
    import ray

    from orchestrator.sweep import ray_start

    pin = re.search(r'"ray\[tune\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert ray.__version__ == pin
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", True)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")
    ray_start.loopback_only(ray)
    assert ray._private.ray_constants.ENABLE_RAY_CLUSTER is False
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    other = types.SimpleNamespace(__version__="9.9.9", _private=types.SimpleNamespace(ray_constants=types.SimpleNamespace()))
    with pytest.raises(RuntimeError, match=r"ray 9\.9\.9 has no ray\._private\.ray_constants\.ENABLE_RAY_CLUSTER"):
        ray_start.loopback_only(other)
