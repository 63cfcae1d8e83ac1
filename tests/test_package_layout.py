"""The package's import structure: no import circles, no private names imported across modules, and layers that
import only downwards (the generic I/O layer ``mri_ssl.io`` depending on nothing above it)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mri_ssl"


def module_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Every module's ``mri_ssl`` imports, at any depth: ``{module: [(imported module, [names]), ...]}``."""
    result = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mri_ssl"):
                found.append((node.module, [alias.name for alias in node.names]))
            elif isinstance(node, ast.Import):
                found += [(alias.name, []) for alias in node.names if alias.name.startswith("mri_ssl")]
        result[name] = found
    return result


def test_no_import_circles():
    imports = module_imports()
    graph = {name: set() for name in imports}
    for name, found in imports.items():
        for module, names in found:
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in imports] or [module]
            graph[name] |= {target for target in targets if target in imports and target != name}
    # A module is on a circle when it can reach itself; depth-first from each module.
    on_circle = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module == start:
                on_circle.append(start)
                break
            if module not in seen:
                seen.add(module)
                todo += graph[module]
    assert on_circle == []


def test_no_private_names_imported_across_modules():
    # Dunders such as __version__ are public.
    private = [(name, module, n) for name, found in module_imports().items() for module, names in found
               for n in names if n.startswith("_") and not n.startswith("__") and module != name]
    assert private == []


def test_io_depends_only_on_itself_and_errors():
    outside = [(name, module) for name, found in module_imports().items() if name.startswith("mri_ssl.io")
               for module, _ in found if not module.startswith(("mri_ssl.io", "mri_ssl.errors"))]
    assert outside == []


# Lowest first; a module may import its own layer and the layers below it, never one above, at any depth (a
# function-level import is still a dependency). Losses sit below networks: no loss needs a network, while the CLIP
# model owns its learnable temperature as a ``CLIPLoss`` (networks.video_text).
LAYERS = (
    ("mri_ssl", "mri_ssl.errors", "mri_ssl.parameters", "mri_ssl.distributed", "mri_ssl.grades", "mri_ssl.io"),
    ("mri_ssl.physics", "mri_ssl.text"),
    ("mri_ssl.transforms",),
    ("mri_ssl.data",),
    ("mri_ssl.losses",),
    ("mri_ssl.networks", "mri_ssl.metrics"),
    ("mri_ssl.engines",),
    ("mri_ssl.trust",),
    ("mri_ssl.experiments",),
    ("mri_ssl.demo", "mri_ssl.method_demos", "mri_ssl.cli", "mri_ssl.__main__"),
)


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest prefix naming ``module`` or a package holding it."""
    matches = [(len(prefix), rank) for rank, prefixes in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def test_layers_import_only_downwards():
    imports = module_imports()
    upward = []
    for name, found in imports.items():
        for module, names in found:
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in imports] or [module]
            upward += [f"{name} imports {target}" for target in targets if layer_of(target) > layer_of(name)]
    assert upward == []


def test_layer_check_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    # The check must fail on what it is there to catch: a network importing an engine lazily.
    package = tmp_path / "mri_ssl"
    (package / "networks").mkdir(parents=True)
    (package / "engines").mkdir()
    (package / "engines" / "trainer.py").write_text("")
    (package / "networks" / "model.py").write_text("def build():\n    from mri_ssl.engines.trainer import x\n")
    monkeypatch.setitem(globals(), "PACKAGE", package)  # module_imports() reads the tree under PACKAGE
    try:
        test_layers_import_only_downwards()
    except AssertionError as error:
        assert "mri_ssl.networks.model imports mri_ssl.engines.trainer" in str(error)
    else:
        raise AssertionError("an upward import inside a function went unnoticed")


def uncommented_function_imports(source: str) -> list[int]:
    """Lines of ``mri_ssl`` imports inside a function with no comment saying why they are not at the top: on the
    import's own line, or on the line above the block of import lines it belongs to."""
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [module or ""]
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or not any(
                    n.startswith("mri_ssl") for n in names):
                continue
            above = node.lineno - 2
            while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
                above -= 1
            if "#" not in lines[node.lineno - 1] and not (above >= 0 and lines[above].strip().startswith("#")):
                found.append(node.lineno)
    return sorted(set(found))


def test_function_level_imports_say_why():
    # Import at the top; a lazy import (an optional dependency, a heavy module one CLI command needs) says so.
    missing = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
               for line in uncommented_function_imports(path.read_text())]
    assert missing == []


def test_uncommented_function_import_check_sees_both_comment_places():
    source = ("def a():\n    from mri_ssl.x import y\n"
              "def b():\n    from mri_ssl.x import y  # heavy\n"
              "def c():\n    # heavy\n    from mri_ssl.x import y\n    from mri_ssl.z import w\n"
              "def d():\n    import json\n")
    assert uncommented_function_imports(source) == [2]


def test_every_mri_ssl_name_a_bundle_config_names_exists():
    """``"$from mri_ssl.x import y"`` imports and ``"_target_": "mri_ssl.x.Y"`` in bundle configs (checked by the static
    scan only for being under mri_ssl) must name something that exists after a module moves."""
    import importlib
    import re

    missing = []
    for config in sorted((PACKAGE.parent / "bundles").rglob("*.json")):
        text = config.read_text()
        for module, names in re.findall(r'"\$from (mri_ssl[\w.]*) import ([\w, ]+)"', text):
            loaded = importlib.import_module(module)
            missing += [(config.name, f"{module}.{name.strip()}") for name in names.split(",")
                        if not hasattr(loaded, name.strip())]
        for dotted in re.findall(r'"_target_": "(mri_ssl(?:\.\w+)+)"', text):
            module, _, name = dotted.rpartition(".")
            if not hasattr(importlib.import_module(module), name):
                missing.append((config.name, dotted))
    assert missing == []
