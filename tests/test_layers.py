"""The import structure the README's Layout promises: model/ is the lowest layer of the product, so
no module of it imports indexer/ or service/ (read from the source with ast, nothing is run)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_model_never_imports_the_layers_above_it():
    upward = {str(path.relative_to(ROOT)): sorted(_imported_packages(path) & {"indexer", "service", "demo"})
              for path in sorted((ROOT / "model").rglob("*.py"))}
    assert {path: names for path, names in upward.items() if names} == {}


def test_the_reader_finds_its_imports(tmp_path):
    # the check above must see an upward import where there is one, also inside a function
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from indexer.store import open_index\n    import service.app\n")
    assert _imported_packages(module) == {"os", "indexer", "service"}
