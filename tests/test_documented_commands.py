"""Every command line the docs give works on main: read from the Markdown, so a changed doc is tested unedited.

Each ```bash block in README.md and in bundles/*/docs/README.md carries a marker on the line before it:

* ``<!-- commands: cpu -->``: runs on a CPU in minutes. Every line is executed, in the order the docs give, in a
  fresh copy of the bundle (for README.md: of bundles/ and experiments/), from the folder the docs say (a ``cd``
  line moves there). ``python -m monai.bundle run`` lines get the bundle's test budget (the ``overrides`` of its
  ``configs/verify_bundle.json``) as one more config file after the documented ones, so the suite stays fast; the
  command's own ``--key value`` overrides still win.
* ``<!-- commands: parse-only -->``: GPU-size runs or the user's own data. Each line must parse: its config files
  exist and every ``--key`` it sets is an id of those configs (no training, nothing read); ``mri-ssl`` lines must
  pass the CLI's argument parser.
* ``<!-- commands: synopsis -->``: a summary with placeholders (``[--out DIR]``); each ``mri-ssl`` subcommand must
  exist.
* ``<!-- commands: benchmarks -->``: ``python benchmarks/NAME.py`` lines; each script must exist (they measure
  speed and are run by hand, not by the suite).
* ``<!-- main-command -->`` / ``<!-- test-command -->`` (README.md only): `.ci/run` runs these verbatim.

A bash block without a marker fails the test, so no documented command escapes it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundle_runner import REPO, run_killing_group
from mri_ssl.cli import build_parser
from mri_ssl.trust.verify import load_verify_settings

DOCS = [REPO / "README.md", *sorted((REPO / "bundles").glob("*/docs/README.md"))]
MARKER = re.compile(r"<!--\s*(?:commands:\s*)?([\w-]+)\s*-->")
KINDS = ("cpu", "parse-only", "synopsis", "benchmarks", "main-command", "test-command")
BUNDLE_RUN = ["python", "-m", "monai.bundle", "run"]
# `monai.bundle run` arguments that are not config ids.
RUN_ARGUMENTS = {"config_file", "meta_file", "logging_file", "bundle_root", "run_id", "init_id", "final_id", "tracking"}
COPY_IGNORE = shutil.ignore_patterns("models", "logs", "demo_data", "features", "heatmaps", "predictions", "*.zip",
                                     "__pycache__")
COMMAND_TIMEOUT_S = 900


@dataclass
class Block:
    doc: Path
    line: int          # of the opening fence, 1-based
    kind: str          # one of KINDS, or "" when unmarked
    commands: list[str]

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def bash_blocks(doc: Path) -> list[Block]:
    """The ```bash blocks of ``doc``, each with the marker of the line before its fence and its command lines
    (continuation lines joined, comment-only and blank lines dropped)."""
    lines = doc.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() != "```bash":
            index += 1
            continue
        marker = MARKER.search(lines[index - 1]) if index else None
        start, body, index = index + 1, [], index + 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        index += 1
        commands, pending = [], ""
        for text in body:
            if text.rstrip().endswith("\\"):
                pending += text.rstrip()[:-1] + " "
                continue
            text, pending = pending + text, ""
            if shlex.split(text, comments=True):
                commands.append(text.strip())
        blocks.append(Block(doc, start, marker.group(1) if marker else "", commands))
    return blocks


ALL_BLOCKS = [block for doc in DOCS for block in bash_blocks(doc)]


def _split(command: str) -> list[list[str]]:
    """The argument vectors of one line (``a; b`` holds two; comments dropped)."""
    vectors: list[list[str]] = [[]]
    for token in shlex.split(command, comments=True):
        vectors[-1].append(token.removesuffix(";"))
        if token.endswith(";"):
            vectors.append([])
    return [argv for argv in vectors if argv]


def bundle_run_arguments(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The config files and the ``--key value`` pairs of a ``[torchrun ...] -m monai.bundle run`` argument vector."""
    start = argv.index("run") + 1
    pairs, index = {}, start
    while index < len(argv):
        key = argv[index]
        assert key.startswith("--"), f"expected --key, got {key!r} in {argv}"
        has_value = index + 1 < len(argv) and not argv[index + 1].startswith("--")
        pairs[key[2:]] = argv[index + 1] if has_value else "True"
        index += 2 if has_value else 1
    files = pairs.get("config_file", "")
    files = ast.literal_eval(files) if files.startswith("[") else [files]
    return list(files), pairs


def is_bundle_run(argv: list[str]) -> bool:
    return "monai.bundle" in argv and "run" in argv and argv[argv.index("monai.bundle") - 1] == "-m"


def check_parses(argv: list[str], cwd: Path) -> None:
    """A documented command that is not run: its configs exist and resolve, the CLI parser accepts it, or (a
    script of the bundle's) the script exists."""
    while "=" in argv[0] and not argv[0].startswith("-"):  # VAR=value prefixes
        argv = argv[1:]
    if argv[0] == "python" and argv[1].endswith(".py"):
        assert (cwd / argv[1]).is_file(), f"{shlex.join(argv)}: no script {cwd / argv[1]}"
        return
    if argv[0] == "mri-ssl":
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exit_:
            pytest.fail(f"the CLI parser refuses {shlex.join(argv)} (exit {exit_.code})")
        return
    assert is_bundle_run(argv), f"not a bundle or mri-ssl command: {shlex.join(argv)}"
    from monai.bundle import ConfigParser

    files, overrides = bundle_run_arguments(argv)
    shipped = [cwd / name for name in files if name.startswith("configs/")]
    missing = [str(path) for path in shipped if not path.is_file()]
    assert not missing, f"{shlex.join(argv)}: config files not found: {missing}"
    parser = ConfigParser()
    parser.read_config([str(path) for path in shipped])
    unknown = [key for key in overrides if key not in RUN_ARGUMENTS and key not in parser]
    assert not unknown, f"{shlex.join(argv)} sets {unknown}, which none of its configs defines"


def test_every_documented_bash_block_is_marked():
    unmarked = [block.name for block in ALL_BLOCKS if block.kind not in KINDS]
    assert not unmarked, f"bash blocks without a <!-- commands: {' | '.join(KINDS[:4])} --> marker: {unmarked}"
    readme = [block.kind for block in ALL_BLOCKS if block.doc.name == "README.md" and block.doc.parent == REPO]
    assert readme.count("main-command") == readme.count("test-command") == 1


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.kind in ("parse-only", "synopsis", "benchmarks")],
                         ids=lambda block: block.name)
def test_documented_commands_parse(block, tmp_path):
    cwd = _fresh_copy(block.doc, tmp_path)
    for command in block.commands:
        for argv in _split(command):
            if argv[0] == "cd":
                cwd = cwd / argv[1]
            elif block.kind == "benchmarks":
                assert argv[0] == "python" and (REPO / argv[1]).is_file(), f"{block.name}: no script {argv[1:2]}"
            elif block.kind == "synopsis":
                assert argv[0] == "mri-ssl", f"{block.name}: a synopsis lists mri-ssl commands, got {command!r}"
                _check_subcommand(argv[1], block)
            else:
                check_parses(argv, cwd)


def _check_subcommand(name: str, block: Block) -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public API)
    assert name in commands, f"{block.name}: `mri-ssl {name}` is not a command ({sorted(commands)})"


def _fresh_copy(doc: Path, tmp_path: Path) -> Path:
    """A fresh copy of what the doc's commands work on; returns the folder they start from."""
    if doc.parent == REPO:
        for name in ("bundles", "experiments"):
            shutil.copytree(REPO / name, tmp_path / name, ignore=COPY_IGNORE)
        return tmp_path
    bundle = doc.parents[1]
    shutil.copytree(bundle, tmp_path / "bundles" / bundle.name, ignore=COPY_IGNORE)
    return tmp_path / "bundles" / bundle.name


def _test_budget(bundle: Path, tmp_path: Path) -> Path | None:
    """The bundle's test budget (``configs/verify_bundle.json`` overrides) as a config file, or None."""
    overrides = load_verify_settings(bundle).get("overrides")
    if not overrides:
        return None
    path = tmp_path / f"{bundle.name}_test_budget.json"
    path.write_text(json.dumps(overrides))
    return path


def _run(argv: list[str], cwd: Path, tmp_path: Path, name: str) -> None:
    if is_bundle_run(argv):
        files, _ = bundle_run_arguments(argv)
        budget = _test_budget(cwd, tmp_path) if cwd.parent.name == "bundles" else None
        files = files + ([str(budget)] if budget else [])
        argv = list(argv)
        argv[argv.index("--config_file") + 1] = "[" + ",".join(repr(f) for f in files) + "]"
    executable = {"python": sys.executable, "mri-ssl": str(Path(sys.executable).with_name("mri-ssl"))}
    assert argv[0] in executable, f"{name}: a cpu block runs python and mri-ssl commands, got {shlex.join(argv)}"
    argv = [executable[argv[0]], *argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    result = run_killing_group(argv, COMMAND_TIMEOUT_S, cwd=cwd, env=env)
    assert result.returncode == 0, (f"{name}: `{shlex.join(argv)}` in {cwd} exited {result.returncode}:\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.kind == "cpu"], ids=lambda block: block.name)
def test_documented_cpu_commands_run_in_order(block, tmp_path):
    cwd = _fresh_copy(block.doc, tmp_path / "work")
    for command in block.commands:
        for argv in _split(command):
            if argv[0] == "cd":
                cwd = cwd / argv[1]
                assert cwd.is_dir(), f"{block.name}: `cd {argv[1]}`: no such folder"
            else:
                _run(argv, cwd, tmp_path, block.name)
