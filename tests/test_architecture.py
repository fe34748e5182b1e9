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
    core = ("orchestrator.spec", "orchestrator.search", "orchestrator.layout")
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


# -- every file of a trial's folder and of a sweep is named in one module ----------------------------------

NAMED_IN = {  # file name -> the one module that spells it (everyone else uses its constants and helpers)
    **dict.fromkeys(("trial.parquet", "steps.parquet", "layers.parquet", "attention.parquet", "progress.json",
                     "error.json", "values.json", "stopped.json"), "localist/trial_files.py"),
    **dict.fromkeys(("trials.parquet", "search.parquet", "sweep.yaml", "driver.json", ".driver.lock", "stop.json", "_rounds.json",
                     "tune-search", "tune-seed", "checkpoint_", "provenance.json", "report.html",
                     "ratio_heatmap.png", "EMPTIED", "mlflow.db"), "orchestrator/layout.py"),
    "localist_trial.json": "localist/model.py",  # a saved model's folder (its card, README.md: localist/model_card.py)
    **dict.fromkeys(("inspect.html", "inspect.json", "attention-layers.png"), "localist/inspection.py"),
}
FOLDERS_IN = {  # a folder name -> the one module that spells it and may join it (io.join, os.path.join)
    **dict.fromkeys(("attempts", "checkpoint"), "localist/trial_files.py"),
    **dict.fromkeys(("trials", "results", "summary", "tune", "search", "logs", "mlflow", "mlflow-artifacts", "wandb"),
                    "orchestrator/layout.py"),
}
def _sources() -> dict[str, ast.Module]:
    out = {}
    for pkg in ("localist", "orchestrator", "benchmarks"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            out[rel] = ast.parse(f.read_text())
    return out


def _strings(tree: ast.Module) -> list[str]:
    """Every string literal of a module (the literal parts of f-strings too), docstrings left out."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def _joined(tree: ast.Module) -> list[str]:
    """String literals passed to a function named join (io.join, lio.join, os.path.join)."""
    return [a.value for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) or getattr(n.func, "id", None)) == "join"
            for a in n.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]


def _named(name: str, text: str) -> bool:
    """`name` as a whole file name in `text` ("trial.parquet", "/trial.parquet", "(trial.parquet);")."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text) is not None


def test_each_trial_and_sweep_file_is_named_in_one_module():
    sources = _sources()
    assert "localist/trial_files.py" in sources and "orchestrator/sweep/status.py" in sources
    strings = {m: _strings(t) for m, t in sources.items()}
    joined = {m: _joined(t) for m, t in sources.items()}
    bad = {}
    for name, owner in NAMED_IN.items():
        where = sorted(m for m, s in strings.items() if any(_named(name, x) for x in s))
        if where != [owner]:
            bad[name] = where
    for name, owner in FOLDERS_IN.items():
        where = sorted(m for m, s in joined.items() if name in s and m != owner)
        if where or name not in strings[owner]:
            bad[name] = where + [f"not {owner}"] * (name not in strings[owner])
    assert not bad, f"named outside their owner (file or folder -> modules that name it): {bad}"
