"""The architecture's rules (docs/architecture.md) hold: no cycles, no module too long, every
module of kb inside the layered contract that `lint-imports` checks."""

from __future__ import annotations

import subprocess
import tomllib

import grimp

from tests.helpers import BIN, ROOT

# Wiring that sits outside the layers: settings and process start-up, read by Django and Celery.
OUTSIDE_THE_LAYERS = {"kb", "kb.settings", "kb.celery", "kb.apps", "kb.embedded_db", "kb.migrations", "kb.logs"}
MAX_LINES = 600


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("kb", "ingestion", include_external_packages=False, cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan), imports inside functions included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_the_import_graph_of_kb_and_ingestion_has_no_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle_when_there_is_one():
    graph = _graph()
    graph.add_import(importer="kb.models", imported="kb.selectors")  # selectors imports models
    assert any({"kb.models", "kb.selectors"} <= component for component in _cycles(graph))


def test_no_module_of_kb_or_ingestion_is_over_600_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for package in ("kb", "ingestion")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_module_of_kb_is_inside_a_layer_of_the_contract():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = next(c for c in config["contracts"] if c["type"] == "layers")
    named = {m.strip() for layer in layered["layers"] for m in layer.split("|")}
    outside = {
        module
        for module in _graph().modules
        if module.startswith("kb")
        and not any(module == n or module.startswith(n + ".") for n in named | OUTSIDE_THE_LAYERS)
    }
    assert outside == set(), "add these modules to a layer in pyproject.toml and docs/architecture.md"


def test_lint_imports_keeps_every_contract():
    result = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
