"""The import structure the README's Layout promises, read from the source with ast (nothing is run):
model/ is the lowest layer of the product, so no module of it imports indexer/ or service/, and no
module of the product reaches itself again through its imports (no import loops), counting imports
inside functions too. Inside model/, the network and its inference (the top-level modules) sit below
model.synthesis, which sits below model.training: only the CLI (model/__main__.py) reaches up."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "indexer", "service", "demo")


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


def _module_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """module name -> the product modules it imports (a `from pkg import name` of a submodule counts)."""
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                edges.add(base)
                edges.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _reaches(graph: dict[str, set[str]], module: str, package: str) -> list[str]:
    """The modules of package (itself or below it) that module imports directly."""
    return sorted(e for e in graph[module] if e == package or e.startswith(package + "."))


def _model_layer_breaches(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    breaches = {}
    for name in sorted(graph):
        if name != "model" and not name.startswith("model."):
            continue
        if name.startswith(("model.training", "model.synthesis")):
            above = ("model.training",) if name.startswith("model.synthesis") else ()
        elif name == "model.__main__":
            above = ()
        else:  # model itself and its top-level modules: the network and its inference
            above = ("model.training", "model.synthesis")
        found = [m for package in above for m in _reaches(graph, name, package)]
        if found:
            breaches[name] = found
    return breaches


def test_the_network_imports_neither_training_nor_synthesis_and_synthesis_not_training():
    graph = _module_graph(ROOT, ("model",))
    assert {"model.training", "model.synthesis", "model.embedder"} <= graph.keys()
    assert _model_layer_breaches(graph) == {}


def test_the_layer_check_sees_relative_and_absolute_imports_up(tmp_path):
    pkg = tmp_path / "model"
    for sub in ("training", "synthesis"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "training" / "adapt.py").write_text("from ..synthesis import cutout\n")  # down: allowed
    (pkg / "training" / "views.py").write_text("")
    (pkg / "synthesis" / "cutout.py").write_text("from ..embedder import x\n")  # down: allowed
    (pkg / "synthesis" / "scenes.py").write_text("def f():\n    from ..training.views import y\n")
    (pkg / "embedder.py").write_text("from .training.adapt import y\n")
    (pkg / "inference.py").write_text("from . import synthesis\n")
    (pkg / "checkpoint.py").write_text("import model.training.views\n")
    (pkg / "pooling.py").write_text("from .training import views\n")
    (pkg / "config.py").write_text("from ..training import x\n")  # above model/, so not model.training
    (pkg / "__main__.py").write_text("from .training.adapt import adapt\nfrom .synthesis import cutout\n")
    assert _model_layer_breaches(_module_graph(tmp_path, ("model",))) == {
        "model.checkpoint": ["model.training.views"],
        "model.embedder": ["model.training.adapt"],
        "model.inference": ["model.synthesis"],
        "model.pooling": ["model.training", "model.training.views"],
        "model.synthesis.scenes": ["model.training.views"],
    }


def test_no_import_loops_in_the_product():
    assert _loops(_module_graph(ROOT)) == []


def test_the_loop_check_finds_a_loop_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from pkg import a\n")
    (pkg / "d.py").write_text("from . import c\n")
    assert _loops(_module_graph(tmp_path, ("pkg",))) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
