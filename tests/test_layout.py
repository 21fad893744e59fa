"""The package's structure, checked from its source with ``ast``: imports
between rspnet's modules form no cycle, each layer imports only the layers
below it (data flows ops → nn → models / search / train → CLIs, with the
run engine beside them), and every module opens with a docstring saying what
it owns."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rspnet")


def _modules() -> dict[str, str]:
    found = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = "rspnet" + path[len(ROOT):-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


MODULES = _modules()


def _imports(module: str, path: str) -> set[str]:
    """The rspnet modules ``module`` imports, at any depth of its code
    (a function-level import still ties the two modules together)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in MODULES and name != module and name != "rspnet":
                targets.add(name)
    return targets


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_the_walk_sees_the_imports():
    """The checker itself: it resolves relative and absolute imports."""
    assert "rspnet.engine.loop" in GRAPH["rspnet.engine"]
    assert "rspnet.architecture" in GRAPH["rspnet.nn.cell"]
    assert "rspnet.engine.distributed" in GRAPH["rspnet.engine.loop"]
    assert "rspnet.search.stage" in GRAPH["rspnet.search.run"]


def test_no_import_cycle():
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


# What each layer may import, besides itself and modules with no rspnet
# imports of their own (files, metrics, the extension loader).
LAYERS = {
    "rspnet.ops": {"rspnet.kernels", "rspnet._extension", "rspnet._build_meta"},
    "rspnet.kernels": set(),
    "rspnet.architecture": {"rspnet.files"},
    "rspnet.nn": {"rspnet.ops", "rspnet.architecture"},
    "rspnet.engine": {"rspnet.files"},
    "rspnet.data": set(),
    "rspnet.models": {"rspnet.nn", "rspnet.architecture", "rspnet.ops"},
    "rspnet.search": {"rspnet.nn", "rspnet.architecture", "rspnet.models", "rspnet.engine", "rspnet.data",
                      "rspnet.metrics", "rspnet.files", "rspnet.cli", "rspnet.ops"},
    "rspnet.train": {"rspnet.nn", "rspnet.architecture", "rspnet.models", "rspnet.engine", "rspnet.data",
                     "rspnet.metrics", "rspnet.files", "rspnet.cli"},
}


def _layer(module: str) -> str:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below(layer):
    allowed = LAYERS[layer] | {layer}
    wrong = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() if _layer(m) == layer
                   for t in targets if _layer(t) not in allowed
                   and not t.endswith("__main__") and t not in ("rspnet._extension",))
    assert not wrong, wrong


def test_nothing_imports_a_command_line_entry():
    wrong = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
                   if t.endswith("__main__") or t in ("rspnet.evaluate", "rspnet.export", "rspnet.info",
                                                       "rspnet.rescale"))
    assert not wrong, wrong


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_owns(module):
    with open(MODULES[module]) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and len(doc.split()) >= 5, f"{MODULES[module]} has no opening docstring"
