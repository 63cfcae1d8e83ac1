"""The package's import structure: no import circles, no private names imported across modules, and the generic
I/O layer (``mri_ssl.io``) depending on nothing above it."""

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
