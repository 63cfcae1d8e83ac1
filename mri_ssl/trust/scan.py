"""Static scan of a bundle's configs: what they would import, call or evaluate, checked before anything is parsed.

A MONAI bundle config is code. A ``_target_`` can name any importable callable, and every string that starts with
``$`` goes to ``eval`` / ``exec`` (``MONAI_EVAL_EXPR=0`` blocks only the latter). ``logging.conf`` is code too:
``logging.config.fileConfig`` evaluates each handler's ``args``. This module reads the files as plain JSON / YAML /
INI text, never through MONAI's parser, and reports every target, expression, macro or logging entry that leaves an
allow-list, naming the file, the config key (MONAI's ``a#b#0`` ids) and the offending text.

What is allowed:

- ``_target_``: a bare name (MONAI looks it up among its own components), or a dotted path inside ``mri_ssl``,
  ``monai``, ``torch``, ``ignite``, ``numpy`` or a harmless part of the standard library, minus the parts of those
  packages that load pickles, download, run bundles, run processes or import by name (``DENIED_PREFIXES``).
- ``$`` expressions: parsed with :mod:`ast`; imports of allowed modules only; names must be safe builtins, names the
  expression imported, MONAI's ``@`` references, or lambda / comprehension variables; attribute chains on imported
  modules must resolve to allowed dotted paths; attributes that reach interpreter internals (``__class__``,
  ``f_globals``, ...) are refused everywhere.
"""

from __future__ import annotations

import ast
import configparser
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")

# Top-level packages a `_target_` or an import may come from.
ALLOWED_ROOTS = frozenset({
    "mri_ssl", "monai", "torch", "ignite", "numpy",
    # standard-library modules with no file, process, network or import-by-name side doors
    "math", "cmath", "collections", "datetime", "itertools", "statistics", "numbers", "fractions", "decimal",
    "random", "copy", "string", "enum", "typing", "dataclasses",
    "os",  # only the parts in OS_ALLOWED below
})
# Every bundle uses `os` for paths and the environment; the rest of it (system, exec*, spawn*, remove...) is refused.
# Reading the environment is allowed, changing it (os.environ.update, setdefault, pop) is not.
OS_ALLOWED = frozenset({"os", "os.environ", "os.environ.get", "os.sep", "os.getcwd", "os.cpu_count", "os.getenv"})

# Parts of allowed packages that load pickles, download, run other bundles or processes, or import by name.
DENIED_PREFIXES = (
    "monai.bundle",                     # load / download / run other bundles, ConfigParser (evaluates configs)
    "monai.apps.utils",                 # download_url, download_and_extract, extractall
    "monai.apps.auto3dseg",             # launches subprocesses
    "monai.apps.nnunet",                # launches subprocesses
    "monai.utils.module",               # optional_import, instantiate, locate: import anything by name
    "monai.utils.misc.run_cmd",         # subprocess
    "monai.data.utils.pickle_hashing",
    "torch.load", "torch.serialization", "torch.jit.load", "torch.hub", "torch.package", "torch.utils.cpp_extension",
    "torch.ops", "torch.library", "torch.classes", "torch.distributed.rpc", "torch.multiprocessing",
    "torch.utils.data.datapipes", "torch.compiler", "torch.export.load",
    "numpy.load", "numpy.lib.npyio", "numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing",
    "numpy.fromfile", "numpy.lib.format",
    "ignite.utils.setup_logger",
    "mri_ssl.cli", "mri_ssl.trust",     # would run or fetch other bundles
)

# Builtins an expression may call or name; eval, exec, open, getattr, __import__, globals ... are absent on purpose.
SAFE_BUILTINS = frozenset({
    "None", "True", "False", "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float",
    "frozenset", "int", "isinstance", "len", "list", "map", "max", "min", "pow", "print", "range", "reversed",
    "round", "set", "slice", "sorted", "str", "sum", "tuple", "zip", "ValueError", "TypeError", "RuntimeError",
})
# Object attributes that lead from any value to frames, globals or code objects.
DENIED_ATTRIBUTES = frozenset({
    "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "gi_frame", "gi_code", "cr_frame", "cr_code",
    "ag_frame", "tb_frame", "tb_next", "co_code", "func_globals", "mro", "format_map",
})
# Logging handlers / formatters logging.conf may name (fileConfig resolves these by import).
LOGGING_CLASSES = frozenset({
    "StreamHandler", "FileHandler", "NullHandler", "logging.StreamHandler", "logging.FileHandler",
    "logging.NullHandler", "logging.Formatter", "logging.handlers.RotatingFileHandler",
    "logging.handlers.TimedRotatingFileHandler",
})

# MONAI's reference syntax: `@id#sub#0` inside expressions (ReferenceResolver.id_matcher), `%file#id` macros.
REFERENCE = re.compile(r"@\w*(?:#\w*)*")
REFERENCE_PLACEHOLDER = "__mri_ssl_reference__"
# "{0.__class__}".format(x) reads attributes that the ast never sees.
FORMAT_FIELD_ACCESS = re.compile(r"\{[^{}]*[.\[][^{}]*\}")


@dataclass(frozen=True)
class Finding:
    """One thing the scan refused: where it is and why."""

    file: str
    key: str
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key or '<top>'}: {self.reason}: {self.text!r}"


def dotted_path_problem(path: str) -> str | None:
    """Why ``path`` (``torch.optim.AdamW``) may not be imported or called, or None if it may."""
    parts = path.split(".")
    if any(part.startswith("_") for part in parts):
        return "private or dunder name"
    if parts[0] not in ALLOWED_ROOTS:
        return f"module {parts[0]!r} is not on the allow-list (mri_ssl, monai, torch, ignite, numpy, harmless stdlib)"
    if parts[0] == "os" and path not in OS_ALLOWED and not (path == "os.path" or path.startswith("os.path.")):
        return "only os.path, reading os.environ, os.sep, os.getcwd, os.getenv and os.cpu_count are allowed from os"
    for prefix in DENIED_PREFIXES:
        if path == prefix or path.startswith(prefix + "."):
            return f"{prefix} is denied (loads pickles, downloads, runs bundles or processes, or imports by name)"
    return None


@functools.lru_cache(maxsize=1)
def _component_locator():
    # Building MONAI's component table imports every monai module (seconds); do it once per process.
    from monai.bundle.config_item import ComponentLocator

    return ComponentLocator()


def bare_target_problem(name: str) -> str | None:
    """A bare ``_target_`` is looked up among MONAI's components; check the module MONAI would take it from."""
    if not name.isidentifier() or name.startswith("_"):
        return "not a valid component name"
    try:
        modules = _component_locator().get_component_module_name(name)
    except Exception as error:  # noqa: BLE001 - a broken MONAI install must not pass the scan silently
        return f"cannot look the component up in MONAI ({type(error).__name__})"
    if modules is None:
        return "no MONAI component of this name"
    for module in [modules] if isinstance(modules, str) else modules:
        problem = dotted_path_problem(f"{module}.{name}")
        if problem:
            return f"resolves to {module}.{name}: {problem}"
    return None


class _ExpressionChecker(ast.NodeVisitor):
    """Collects problems in one parsed ``$`` expression."""

    def __init__(self, imported: dict[str, str]):
        self.imported = dict(imported)  # name in the expression -> dotted module path
        self.local_names: set[str] = set()
        self.problems: list[str] = []

    def check(self, tree: ast.AST) -> list[str]:
        # Names bound inside the expression (lambda arguments, comprehension targets) are its own variables.
        for node in ast.walk(tree):
            if isinstance(node, ast.arguments):
                for arg in node.posonlyargs + node.args + node.kwonlyargs + [node.vararg, node.kwarg]:
                    if arg is not None:
                        self.local_names.add(arg.arg)
            elif isinstance(node, ast.comprehension):
                self.local_names.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.NamedExpr):
                self.local_names.add(node.target.id)
        self.visit(tree)
        return self.problems

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            problem = dotted_path_problem(alias.name)
            if problem:
                self.problems.append(f"import {alias.name}: {problem}")
            elif alias.asname:
                self.imported[alias.asname] = alias.name
            else:
                self.imported[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            self.problems.append("relative import")
            return
        for alias in node.names:
            path = f"{node.module}.{alias.name}"
            problem = "import *" if alias.name == "*" else dotted_path_problem(path)
            if problem:
                self.problems.append(f"from {node.module} import {alias.name}: {problem}")
            else:
                self.imported[alias.asname or alias.name] = path

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == "format" and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) \
                and FORMAT_FIELD_ACCESS.search(node.value.value):
            self.problems.append("str.format with attribute or item access in a field (reads any attribute)")
            return
        if node.attr.startswith("_") or node.attr in DENIED_ATTRIBUTES:
            self.problems.append(f"attribute {node.attr!r} reaches interpreter internals")
            return
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            if base.attr.startswith("_") or base.attr in DENIED_ATTRIBUTES:
                self.problems.append(f"attribute {base.attr!r} reaches interpreter internals")
                return
            chain.append(base.attr)
            base = base.value
        if isinstance(base, ast.Name) and base.id in self.imported and base.id not in self.local_names:
            path = ".".join([self.imported[base.id]] + chain[::-1])
            problem = dotted_path_problem(path)
            if problem:
                self.problems.append(f"{path}: {problem}")
            return  # the root name is an allowed import
        self.visit(base)

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name in SAFE_BUILTINS or name in self.local_names or name == REFERENCE_PLACEHOLDER:
            return
        if name in self.imported:
            return
        self.problems.append(f"name {name!r} is not a safe builtin, an allowed import or a reference")

    def generic_visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.Global, ast.Nonlocal, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef,
                             ast.With, ast.AsyncWith, ast.Try, ast.Delete, ast.Await)):
            self.problems.append(f"{type(node).__name__} statements are not allowed")
            return
        super().generic_visit(node)


def expression_problems(text: str, imported: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Problems in one ``$`` string (without the ``$``), and the names it imports (for later expressions)."""
    source = REFERENCE.sub(REFERENCE_PLACEHOLDER, text)
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as error:
        return [f"not valid Python ({error.msg})"], {}
    checker = _ExpressionChecker(imported or {})
    problems = checker.check(tree)
    new_imports = {k: v for k, v in checker.imported.items() if (imported or {}).get(k) != v}
    return problems, new_imports


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, str | None, Any]]:
    """(config id, dict key or None, value) for every node, MONAI-style ids ``a#b#0``."""
    if isinstance(value, dict):
        for k, v in value.items():
            child = f"{key}#{k}" if key else str(k)
            yield child, str(k), v
            yield from _walk(v, child)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            child = f"{key}#{i}" if key else str(i)
            yield child, None, v
            yield from _walk(v, child)


def _load_config_text(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)


def _imports_of(config: Any) -> dict[str, str]:
    """Names every ``$import`` in the file binds; MONAI runs all of them in a shared global namespace."""
    imported: dict[str, str] = {}
    for _, _, value in _walk(config):
        if isinstance(value, str) and value.startswith("$") and re.match(r"\$\s*(import|from)\s", value):
            problems, names = expression_problems(value[1:])
            if not problems:
                imported.update(names)
    return imported


def scan_config(path: Path, bundle_root: Path, shared_imports: dict[str, str] | None = None) -> list[Finding]:
    """Findings in one JSON / YAML config; ``shared_imports``: names other configs of the bundle import."""
    name = path.relative_to(bundle_root).as_posix() if path.is_relative_to(bundle_root) else str(path)
    try:
        config = _load_config_text(path)
    except (ValueError, yaml.YAMLError, UnicodeDecodeError) as error:
        return [Finding(name, "", str(error)[:200], "cannot be read as JSON / YAML")]
    findings = []
    imported = {**(shared_imports or {}), **_imports_of(config)}
    for key, dict_key, value in _walk(config):
        if dict_key == "_target_":
            if not isinstance(value, str):
                findings.append(Finding(name, key, repr(value), "_target_ must be a string"))
                continue
            text = value[1:] if value.startswith("$") else value
            if value.startswith("$"):
                problem_list, _ = expression_problems(text, imported)
                problem = "; ".join(problem_list) or None
            elif value.startswith("@"):
                problem = None  # a reference to another item, which is scanned where it is defined
            elif "." in text:
                problem = dotted_path_problem(text)
            else:
                problem = bare_target_problem(text)
            if problem:
                findings.append(Finding(name, key, value, f"_target_ refused: {problem}"))
        elif dict_key == "_mode_" and value == "debug":
            findings.append(Finding(name, key, value, "_mode_ debug starts an interactive debugger"))
        elif isinstance(value, str) and value.startswith("$"):
            problems, _ = expression_problems(value[1:], imported)
            for problem in problems:
                findings.append(Finding(name, key, value, f"expression refused: {problem}"))
        elif isinstance(value, str) and value.startswith("%"):
            macro_file = value[1:].split("#", 1)[0]
            if macro_file and not (bundle_root / macro_file).resolve().is_relative_to(bundle_root.resolve()):
                findings.append(Finding(name, key, value, "macro refers to a file outside the bundle"))
    return findings


def scan_overrides(overrides: dict, name: str = "overrides") -> list[Finding]:
    """Findings in config overrides given outside the bundle's files (command-line ``--set`` values, an experiment
    grid's overrides): they become config text, so they are scanned like a config file named ``name``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="overrides_") as folder:
        path = Path(folder) / "configs" / f"{name}.json"
        path.parent.mkdir()
        path.write_text(json.dumps(overrides))
        return scan_config(path, Path(folder))


def scan_logging_config(path: Path, bundle_root: Path) -> list[Finding]:
    """``logging.config.fileConfig`` imports ``class`` and evaluates ``args``: allow known handlers, literal args."""
    name = path.relative_to(bundle_root).as_posix()
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8"))
    except (configparser.Error, UnicodeDecodeError) as error:
        return [Finding(name, "", str(error)[:200], "cannot be read as a logging config")]
    findings = []
    for section in parser.sections():
        for option in ("class", "args", "kwargs"):
            if not parser.has_option(section, option):
                continue
            value = parser.get(section, option)
            key = f"{section}#{option}"
            if option == "class":
                if value.strip() not in LOGGING_CLASSES:
                    findings.append(Finding(name, key, value, "logging class not on the allow-list"))
                continue
            problems = _logging_args_problems(value)
            findings.extend(Finding(name, key, value, f"logging {option} refused: {p}") for p in problems)
    return findings


def _logging_args_problems(text: str) -> list[str]:
    """fileConfig evaluates args in the ``logging`` namespace; accept literals and sys.stdout / sys.stderr only."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        return [f"not valid Python ({error.msg})"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr in ("stdout", "stderr")):
                problems.append(f"attribute {node.attr!r}")
        elif isinstance(node, ast.Name) and node.id != "sys":
            problems.append(f"name {node.id!r}")
        elif isinstance(node, (ast.Call, ast.Lambda, ast.Subscript, ast.BinOp, ast.NamedExpr)):
            problems.append(f"{type(node).__name__} in logging arguments")
    return problems


def config_files(bundle_root: Path) -> list[Path]:
    """Every config file of a bundle: JSON / YAML under configs/ (recursively)."""
    folder = Path(bundle_root) / "configs"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CONFIG_SUFFIXES)


def scan_bundle(bundle_root: str | Path) -> list[Finding]:
    """Static scan of every config and logging config of a bundle; an empty list means nothing was refused."""
    root = Path(bundle_root)
    files = config_files(root)
    # MONAI merges a run's configs into one namespace, so `import os` in train.json serves inference.json too; the
    # names imported anywhere in the bundle are known everywhere (each import itself is checked where it stands).
    shared: dict[str, str] = {}
    for path in files:
        try:
            shared.update(_imports_of(_load_config_text(path)))
        except (ValueError, yaml.YAMLError, UnicodeDecodeError):
            pass
    findings = []
    for path in files:
        findings.extend(scan_config(path, root, shared))
    for path in sorted((root / "configs").rglob("*.conf")) + sorted((root / "configs").rglob("*.ini")):
        findings.extend(scan_logging_config(path, root))
    return findings
