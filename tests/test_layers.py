"""The package's import structure: no cycles, ``models`` below ``service``, network clients apart from the service."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "featureserve"


def module_name(path: Path) -> str:
    """``featureserve/service/api/rest/app.py`` -> ``featureserve.service.api.rest.app``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports at module level (function-local imports excluded)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import module`` depends on the module; ``from pkg import name`` on the package.
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets = [n for n in names if n in known] or [base]
        else:
            continue
        found |= {target for target in targets if target in known}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports."""
    paths = [p for p in PACKAGE.rglob("*.py") if "v1" not in p.relative_to(PACKAGE).parts]
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 40
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None


def test_layers_point_one_way() -> None:
    for module, imports in import_graph().items():
        if module.startswith("featureserve.models"):
            assert not {m for m in imports if not m.startswith("featureserve.models")}, module
        if module.startswith("featureserve.client"):
            assert not {m for m in imports if m.startswith(("featureserve.service", "featureserve.models"))}, module
        if module.startswith("featureserve.service.api"):
            # Transports reach the pool through the operations layer only.
            assert not {m for m in imports if m.startswith("featureserve.service.workers.pool")}, module


def test_network_clients_import_neither_the_service_nor_torch() -> None:
    code = (
        "import sys, featureserve.client; "
        "print(sorted(m for m in sys.modules if m.startswith('featureserve.service') or m == 'torch'))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
