"""An experiment grid: which bundle runs compare pretraining strategies, read from a YAML file and checked.

A grid crosses pretraining modes x label fractions x seeds x downstream datasets. Every run is a plain bundle
invocation (``python -m monai.bundle run``) with a JSON file of overrides, so a grid is nothing a user could not
type by hand. The YAML format (``experiments/demo.yaml`` is a commented example)::

    name: demo
    bundles: ../bundles                 # the folder holding the bundles, relative to this file
    seeds: [0, 1, 2]
    label_fractions: [0.1, 1.0]
    modes: [random, base, seqaug, seqinv]   # `random` is the random-init baseline: no pretraining run
    titles: {random: Random init}       # optional: the tables' column titles (default: built-in or the name)
    variants:                           # optional: more columns, each an encoder of `modes` trained otherwise
      simaug: {encoder: random, overrides: {training_contrast: simulated}}
      seqinv_finetuned: {encoder: seqinv, overrides: {freeze_encoder: false}, demo_tasks: [tissue]}
    overrides: {...}                    # given to every run (e.g. where the embedded demo data are written)
    pretraining:
      bundle: mri_ssl_pretrain
      configs: [train.json, cpu_demo.json]   # files in the bundle's configs/ folder, in order
      encoder: encoder_best.pt          # the exported encoder the downstream runs load (from the run's models/)
      mode_key: view_mode               # the config id that receives the mode's name (default view_mode; or null)
      probe: probe.json                 # the representation probe's history, relative to the run's logs/ (default)
      then:                             # optional: more bundle invocations after training, in the same folder
        - {name: heatmaps, configs: [stage1.json, generate_heatmaps.json, cpu_demo.json]}
      overrides: {...}
      mode_overrides: {base: {...}}     # optional, per mode
    downstream:                         # may be empty: a grid of pretraining runs only (their probe curves)
      - name: tissue                    # a dataset and task: one table
        bundle: mri_segmentation
        configs: [train.json, cpu_demo.json]
        evaluate: [evaluate.json]       # added after `configs` for the evaluation run
        inference: [inference.json]     # optional: also write predictions (the demo's overlays use them)
        metrics: {dice_mean: higher, hd95_mm_mean: lower}
        in_domain: {site: [phantom], sequence: [T1w]}   # rows matching every given key are "in domain"
        overrides: {...}

The modes name the pretraining runs. With the default ``mode_key: view_mode`` they are the view modes of the 3-D
pretraining bundle (``PRETRAINING_MODES``) and each run gets ``view_mode: <mode>``. Another bundle's pretraining
names its own modes (lower-case names: letters, digits, ``_``) and sets ``mode_key`` to the config id that takes
the name, or to ``null`` when the bundle has a single way of pretraining (then the modes differ only by their
``mode_overrides``). For example the cardiac bundle (``experiments/cardiac_label_efficiency.yaml``)::

    modes: [random, simsiam]
    pretraining:
      bundle: cardiac_sequence_classification
      configs: [pretrain.json, cpu_demo.json]
      encoder: simsiam/encoder_best.pt
      mode_key: null

A variant is a downstream-only column: the encoder of one of ``modes`` (``random`` or a pretrained one, from the
same seed's pretraining run) under a downstream run with the variant's ``overrides`` added, for every downstream
task or only the ones named in ``tasks`` (``mri-ssl demo`` runs it only for ``demo_tasks``, when given, to keep the
demo's time bounded). The columns are ``modes`` then the variants, in the file's order. A downstream task's
``mode_overrides`` may name a mode or a variant: a variant's run of that task takes its encoder's entry, then the
variant's ``overrides``, then the entry naming the variant (settings one column needs on one task only, e.g. a
longer schedule for ``simaug``'s tissue run, which its denoising run must not get).

Values in ``overrides`` are bundle config ids and values. In strings, ``{grid_dir}`` is replaced by the grid file's
folder when the grid is read, and ``{out_dir}`` by the experiment's output folder when a run starts (so runs can
share data written once, e.g. ``demo_data_dir: "{out_dir}/data/downstream"``; the hash keeps the placeholder, so
the same grid in another folder is the same experiment). A relative path in a path-valued override (a key ending
in ``_dir``, ``_path`` or ``_file``, e.g. ``dataset_dir: data_manifests/ixi.json``) is taken relative to the folder
the grid is run from, as a path typed on the command line would be, and made absolute when the grid is read: each
bundle run works in its own folder, where the relative path would name nothing. The runner sets ``seed`` and the
run's folder as
``bundle_root`` itself, with the ``mode_key`` (pretraining), ``label_fraction``, ``encoder_path`` (the pretraining
run's ``models/<encoder>``) and ``pretrained`` (downstream).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mri_ssl.errors import InputError

RANDOM_INIT = "random"
PRETRAINING_MODES = ("base", "seqaug", "seqinv")  # the 3-D pretraining bundle's view modes (its `view_mode`)
DEFAULT_MODE_KEY = "view_mode"
MODE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a mode names run folders and table columns
METRIC_DIRECTIONS = ("higher", "lower")
# Overrides a grid may not set itself: the runner owns them, so a run's folder and identity stay consistent.
RESERVED_KEYS = ("bundle_root", "seed", "view_mode", "label_fraction", "encoder_path", "pretrained")


@dataclass(frozen=True)
class StageSpec:
    """One bundle: its folder, the config files of each stage (paths), and the overrides common to its runs."""

    name: str
    bundle_dir: Path
    configs: tuple[Path, ...]
    overrides: dict = field(default_factory=dict)
    evaluate: tuple[Path, ...] = ()
    inference: tuple[Path, ...] = ()
    metrics: dict = field(default_factory=dict)
    in_domain: dict = field(default_factory=dict)
    mode_overrides: dict = field(default_factory=dict)
    encoder: str = "encoder_best.pt"      # pretraining: the exported encoder file, relative to the run's models/
    mode_key: str | None = DEFAULT_MODE_KEY  # pretraining: the config id set to the mode's name (None: none)
    probe: str = "probe.json"  # pretraining: the representation probe's history file, relative to the run's logs/
    then: tuple[tuple[str, tuple[Path, ...]], ...] = ()  # more bundle invocations after training: (name, configs)


@dataclass(frozen=True)
class Variant:
    """A downstream-only column: the encoder of ``encoder`` (a mode), trained downstream with ``overrides``."""

    name: str
    encoder: str
    overrides: dict = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None  # None: every downstream task
    demo_tasks: tuple[str, ...] | None = None  # `mri-ssl demo` runs the variant for these tasks only (None: tasks)

    def applies_to(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    seeds: tuple[int, ...]
    label_fractions: tuple[float, ...]
    modes: tuple[str, ...]
    pretraining: StageSpec | None
    downstream: tuple[StageSpec, ...]
    variants: tuple[Variant, ...] = ()
    titles: dict = field(default_factory=dict)  # column (mode or variant) -> table title, where the grid gives one

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's methods: the modes, then the variants."""
        return self.modes + tuple(variant.name for variant in self.variants)

    def columns_for(self, task: str) -> tuple[str, ...]:
        """The methods of one downstream task's table: the modes, then the variants that apply to it."""
        return self.modes + tuple(variant.name for variant in self.variants if variant.applies_to(task))


@dataclass
class Run:
    """One bundle run of the grid (pretraining of a mode, or a downstream task for a mode / fraction / seed)."""

    kind: str                      # "pretrain" or "downstream"
    task: str                      # "pretrain" or the downstream entry's name
    mode: str
    seed: int
    fraction: float | None
    spec: StageSpec
    overrides: dict
    upstream: "Run | None" = None  # the pretraining run a downstream run loads its encoder from
    config_hash: str = ""

    @property
    def label(self) -> str:
        parts = [self.task, self.mode]
        if self.fraction is not None:
            parts.append(f"frac{self.fraction:g}")
        parts.append(f"seed{self.seed}")
        return "-".join(parts)

    def stages(self, infer: bool = True) -> list[tuple[str, tuple[Path, ...]]]:
        """``(stage name, config files)`` in the order they run."""
        stages = [("train", self.spec.configs), *self.spec.then]
        if self.spec.evaluate:
            stages.append(("evaluate", _with_extra(self.spec.configs, self.spec.evaluate)))
        if infer and self.spec.inference:
            stages.append(("inference", _with_extra(self.spec.configs, self.spec.inference)))
        return stages


def _with_extra(configs: tuple[Path, ...], extra: tuple[Path, ...]) -> tuple[Path, ...]:
    # A stage file goes right after the bundle's base config (train.json), before the slim-size overrides such as
    # cpu_demo.json, exactly as the bundles' docs order them: sizes set by cpu_demo.json must win over it.
    return configs[:1] + extra + configs[1:]


def _require(mapping: Mapping, key: str, where: str, kind: type | tuple[type, ...]):
    if key not in mapping:
        raise InputError(where, f"missing {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(where, f"{key!r} must be a {names}, got {value!r}")
    return value


def expand_placeholders(value: Any, replacements: Mapping[str, str]) -> Any:
    """Replace each ``{name}`` of ``replacements`` in strings, recursively through lists and mappings."""
    if isinstance(value, str):
        for name, text in replacements.items():
            value = value.replace("{" + name + "}", str(text))
        return value
    if isinstance(value, list):
        return [expand_placeholders(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: expand_placeholders(v, replacements) for k, v in value.items()}
    return value


def _overrides(mapping: Mapping, key: str, where: str, grid_dir: Path,
               reserved_keys: tuple[str, ...] = RESERVED_KEYS) -> dict:
    value = mapping.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(where, f"{key!r} must be a mapping of config ids to values, got {value!r}")
    reserved = sorted(set(value) & set(reserved_keys))
    if reserved:
        raise InputError(where, f"{key!r} sets {reserved}, which the experiment runner sets for each run")
    return absolute_path_overrides(expand_placeholders(dict(value), {"grid_dir": grid_dir}))


PATH_KEY_SUFFIXES = ("_dir", "_path", "_file")


def absolute_path_overrides(overrides: dict, cwd: Path | None = None) -> dict:
    """``overrides`` with every relative path under a path-valued key (``PATH_KEY_SUFFIXES``) made absolute
    against ``cwd`` (the current folder). Empty strings, config expressions (``$...``, ``@...``, ``%...``) and
    strings still holding an ``{out_dir}``-style placeholder are left as they are."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    resolved = {}
    for key, value in overrides.items():
        is_plain_path = (isinstance(value, str) and value and not value.startswith(("$", "@", "%"))
                         and "{" not in value)
        if key.endswith(PATH_KEY_SUFFIXES) and is_plain_path:
            value = os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))  # join keeps an absolute path
        resolved[key] = value
    return resolved


def _config_files(bundle_dir: Path, names, where: str, key: str) -> tuple[Path, ...]:
    if names is None:
        return ()
    if isinstance(names, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(where, f"{key!r} must be a list of config file names, got {names!r}")
    files = []
    for name in names:
        path = bundle_dir / "configs" / name
        if not path.is_file():
            raise InputError(path, f"config file named in {where} {key!r} not found")
        files.append(path)
    return tuple(files)


def _stage(entry: Mapping, where: str, bundles: Path, grid_dir: Path, downstream: bool,
           reserved_keys: tuple[str, ...] = RESERVED_KEYS, mode_key: str | None = DEFAULT_MODE_KEY) -> StageSpec:
    if not isinstance(entry, dict):
        raise InputError(where, f"must be a mapping, got {entry!r}")
    bundle = _require(entry, "bundle", where, str)
    bundle_dir = bundles / bundle
    if not (bundle_dir / "configs").is_dir():
        raise InputError(bundle_dir, f"bundle named in {where} not found (no configs/ folder)")
    configs = _config_files(bundle_dir, _require(entry, "configs", where, list), where, "configs")
    if not configs:
        raise InputError(where, "'configs' is empty; give at least the bundle's train.json")
    metrics, in_domain = {}, {}
    if downstream:
        metrics = _require(entry, "metrics", where, dict)
        bad = {m: d for m, d in metrics.items() if d not in METRIC_DIRECTIONS}
        if not metrics or bad:
            raise InputError(where, f"'metrics' maps metric names to one of {METRIC_DIRECTIONS}, got {metrics!r}")
        in_domain = entry.get("in_domain") or {}
        if not isinstance(in_domain, dict) or not all(isinstance(v, list) for v in in_domain.values()):
            raise InputError(where, f"'in_domain' maps site / sequence to lists of values, got {in_domain!r}")
    mode_overrides = entry.get("mode_overrides") or {}
    if not isinstance(mode_overrides, dict):
        raise InputError(where, f"'mode_overrides' must map modes to overrides, got {mode_overrides!r}")
    return StageSpec(
        name=str(entry.get("name", "pretrain")), bundle_dir=bundle_dir, configs=configs,
        overrides=_overrides(entry, "overrides", where, grid_dir, reserved_keys),
        evaluate=_config_files(bundle_dir, entry.get("evaluate"), where, "evaluate"),
        inference=_config_files(bundle_dir, entry.get("inference"), where, "inference"),
        metrics=dict(metrics), in_domain=dict(in_domain),
        mode_overrides={mode: _overrides(mode_overrides, mode, where, grid_dir, reserved_keys)
                        for mode in mode_overrides},
        encoder=str(entry.get("encoder", "encoder_best.pt")), mode_key=mode_key,
        probe=str(entry.get("probe", "probe.json")), then=_then_stages(entry.get("then"), bundle_dir, where))


STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a stage names its log file


def _then_stages(content, bundle_dir: Path, where: str) -> tuple[tuple[str, tuple[Path, ...]], ...]:
    """A stage's ``then``: more bundle invocations run in the same folder after training, in order, each a mapping
    of ``name`` (its log is ``<name>.log``) and its own full list of ``configs`` (e.g. a second training that reads
    what the first wrote)."""
    if content is None:
        return ()
    if not isinstance(content, list):
        raise InputError(where, f"'then' must be a list of {{name, configs}}, got {content!r}")
    stages = []
    for index, entry in enumerate(content):
        place = f"{where} then[{index}]"
        if not isinstance(entry, dict):
            raise InputError(place, f"must be a mapping with 'name' and 'configs', got {entry!r}")
        name = _require(entry, "name", place, str)
        taken = ["train", "evaluate", "inference"] + [stage for stage, _ in stages]
        if not STAGE_NAME.match(name) or name in taken:
            raise InputError(place, f"'name' must be a new lower-case name (letters, digits, '_'; not one of "
                                    f"{taken}), got {name!r}")
        configs = _config_files(bundle_dir, _require(entry, "configs", place, list), place, "configs")
        if not configs:
            raise InputError(place, "'configs' is empty")
        stages.append((name, configs))
    return tuple(stages)


def _mode_key(entry, where: str) -> str | None:
    """The pretraining entry's ``mode_key``: the config id that receives the mode's name (``view_mode`` by default),
    or None (``null``) for a bundle with a single way of pretraining."""
    if not isinstance(entry, dict):
        return DEFAULT_MODE_KEY
    key = entry.get("mode_key", DEFAULT_MODE_KEY)
    if key is not None and (not isinstance(key, str) or not key):
        raise InputError(where, f"'mode_key' must be a bundle config id or null, got {key!r}")
    return key


def _check_modes(modes: list, mode_key: str | None, where: str) -> None:
    """Distinct mode names; with the default ``mode_key`` (the 3-D bundle's ``view_mode``), only its view modes."""
    if not modes or len(set(map(str, modes))) != len(modes) or not all(
            isinstance(m, str) and MODE_NAME.match(m) for m in modes):
        raise InputError(where, f"'modes' must be distinct names of lower-case letters, digits and '_' ({RANDOM_INIT!r}"
                                f" for the random-init baseline), got {modes!r}")
    unknown = [m for m in modes if m not in (RANDOM_INIT,) + PRETRAINING_MODES]
    if mode_key == DEFAULT_MODE_KEY and unknown:
        raise InputError(where, f"'modes' {unknown} are not values of {DEFAULT_MODE_KEY!r} "
                                f"{(RANDOM_INIT,) + PRETRAINING_MODES}; for another bundle's pretraining set "
                                f"'pretraining: mode_key' to the config id that takes the mode's name, or to null")


def load_grid(path: str | os.PathLike, bundles_dir: str | os.PathLike | None = None) -> Grid:
    """Read and check a grid YAML file; every problem is an ``InputError`` naming the file and the key.

    ``bundles_dir`` overrides the grid's ``bundles`` folder.
    """
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InputError(path, f"cannot read the grid file ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        raise InputError(path, f"not valid YAML ({error})") from error
    if not isinstance(content, dict):
        raise InputError(path, "a grid file must hold a mapping (name, seeds, modes, pretraining, downstream, ...)")
    grid_dir = path.resolve().parent
    where = str(path)
    bundles = (Path(bundles_dir) if bundles_dir else grid_dir / str(content.get("bundles", "../bundles"))).resolve()
    if not bundles.is_dir():
        raise InputError(bundles, "bundles folder not found; set 'bundles' in the grid or pass --bundles-dir")

    seeds = _require(content, "seeds", where, list)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != \
            len(seeds):
        raise InputError(where, f"'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
    fractions = content.get("label_fractions", [1.0])
    if not isinstance(fractions, list) or not fractions or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions):
        raise InputError(where, f"'label_fractions' must be a non-empty list of numbers in (0, 1], got {fractions!r}")
    modes = _require(content, "modes", where, list)
    mode_key = _mode_key(content.get("pretraining"), f"{where} pretraining")
    _check_modes(modes, mode_key, where)
    reserved_keys = RESERVED_KEYS + ((mode_key,) if mode_key and mode_key not in RESERVED_KEYS else ())
    common = _overrides(content, "overrides", where, grid_dir, reserved_keys)
    pretraining = None
    pretrained_modes = [mode for mode in modes if mode != RANDOM_INIT]
    if pretrained_modes:
        pretraining = _stage(_require(content, "pretraining", where, dict), f"{where} pretraining", bundles,
                             grid_dir, downstream=False, reserved_keys=reserved_keys, mode_key=mode_key)
        pretraining = _with_common(pretraining, common)
        settings = [json.dumps(pretraining.mode_overrides.get(mode, {}), sort_keys=True) for mode in pretrained_modes]
        if mode_key is None and len(set(settings)) != len(settings):
            raise InputError(f"{where} pretraining", f"modes {pretrained_modes} would be the same pretraining run: "
                                                     f"without a 'mode_key', give each its own 'mode_overrides'")
    entries = content.get("downstream") or []
    if not isinstance(entries, list):
        raise InputError(where, f"'downstream' must be a list of datasets / tasks, got {entries!r}")
    if not entries and pretraining is None:
        raise InputError(where, "'downstream' lists no dataset / task and no mode is pretrained: nothing to run")
    downstream = tuple(_with_common(_stage(entry, f"{where} downstream[{index}]", bundles, grid_dir, True), common)
                       for index, entry in enumerate(entries))
    names = [spec.name for spec in downstream]
    if len(set(names)) != len(names) or "pretrain" in names:
        raise InputError(where, f"downstream names must be distinct and not 'pretrain', got {names}")
    variants = _variants(content.get("variants"), where, tuple(modes), names, grid_dir)
    titles = content.get("titles") or {}
    columns = tuple(modes) + tuple(variant.name for variant in variants)
    for index, spec in enumerate(downstream):
        unknown = sorted(set(spec.mode_overrides) - set(columns))
        if unknown:
            raise InputError(f"{where} downstream[{index}]", f"'mode_overrides' names {unknown}, which are not "
                                                             f"columns of the grid {list(columns)}")
    if not isinstance(titles, dict) or not set(titles) <= set(columns) or not all(
            isinstance(t, str) and t for t in titles.values()):
        raise InputError(where, f"'titles' must map columns {list(columns)} to table titles, got {titles!r}")
    return Grid(name=str(content.get("name", path.stem)), path=path.resolve(), seeds=tuple(seeds),
                label_fractions=tuple(float(f) for f in fractions), modes=tuple(modes), pretraining=pretraining,
                downstream=downstream, variants=variants, titles=dict(titles))


def _variants(content, where: str, modes: tuple[str, ...], tasks: list[str], grid_dir: Path) -> tuple[Variant, ...]:
    if content is None:
        return ()
    if not isinstance(content, dict):
        raise InputError(where, f"'variants' must map column names to {{encoder, overrides, tasks}}, got {content!r}")
    variants = []
    for name, entry in content.items():
        place = f"{where} variants.{name}"
        if not isinstance(name, str) or name in (RANDOM_INIT,) + PRETRAINING_MODES + modes:
            raise InputError(place, f"a variant needs a name of its own (not a mode), got {name!r}")
        if not isinstance(entry, dict):
            raise InputError(place, f"must be a mapping with 'encoder' and 'overrides', got {entry!r}")
        encoder = _require(entry, "encoder", place, str)
        if encoder not in modes:
            raise InputError(place, f"'encoder' must be one of the grid's modes {list(modes)}, got {encoder!r}")
        chosen = {}
        for key in ("tasks", "demo_tasks"):
            only = entry.get(key)
            if only is not None and (not isinstance(only, list) or not set(only) <= set(tasks) or not only):
                raise InputError(place, f"{key!r} must be a non-empty list of downstream names {tasks}, got {only!r}")
            chosen[key] = None if only is None else tuple(only)
        variants.append(Variant(name, encoder, _overrides(entry, "overrides", place, grid_dir), **chosen))
    return tuple(variants)


def _with_common(spec: StageSpec, common: dict) -> StageSpec:
    from dataclasses import replace

    return replace(spec, overrides={**common, **spec.overrides})


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_hash(run: Run, infer: bool = True) -> str:
    """A digest of everything that decides a run's result: the config files' contents, the overrides, the stages
    and, for a downstream run, the hash of the pretraining run it loads. Unchanged hash = reuse the finished run."""
    identity = {
        "bundle": run.spec.bundle_dir.name,
        "stages": [(stage, [[path.name, _file_digest(path)] for path in files]) for stage, files in run.stages(infer)],
        "overrides": run.overrides,
        "upstream": run.upstream.config_hash if run.upstream else None,
        "encoder": run.upstream.spec.encoder if run.upstream else None,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def expand_runs(grid: Grid, infer: bool = True) -> list[Run]:
    """Every run of the grid, pretraining runs first (a downstream run needs its encoder), hashes filled in."""
    runs: list[Run] = []
    pretrain_runs: dict[tuple[str, int], Run] = {}
    for seed in grid.seeds:
        for mode in grid.modes:
            if mode == RANDOM_INIT:
                continue
            spec = grid.pretraining
            mode_setting = {spec.mode_key: mode} if spec.mode_key else {}
            overrides = {**spec.overrides, **spec.mode_overrides.get(mode, {}), **mode_setting, "seed": seed}
            run = Run("pretrain", "pretrain", mode, seed, None, spec, overrides)
            run.config_hash = run_hash(run, infer)
            pretrain_runs[(mode, seed)] = run
            runs.append(run)
    for spec in grid.downstream:
        for fraction in grid.label_fractions:
            for seed in grid.seeds:
                for mode in grid.modes:
                    upstream = pretrain_runs.get((mode, seed))
                    overrides = {**spec.overrides, **spec.mode_overrides.get(mode, {}), "seed": seed,
                                 "label_fraction": fraction, "pretrained": upstream is not None}
                    run = Run("downstream", spec.name, mode, seed, fraction, spec, overrides, upstream)
                    run.config_hash = run_hash(run, infer)
                    runs.append(run)
                for variant in [v for v in grid.variants if v.applies_to(spec.name)]:
                    upstream = pretrain_runs.get((variant.encoder, seed))
                    # The task's mode_overrides of the variant's encoder, then the variant's own, then the task's
                    # mode_overrides naming the variant (what this column needs on this task only).
                    overrides = {**spec.overrides, **spec.mode_overrides.get(variant.encoder, {}),
                                 **variant.overrides, **spec.mode_overrides.get(variant.name, {}), "seed": seed,
                                 "label_fraction": fraction, "pretrained": upstream is not None}
                    run = Run("downstream", spec.name, variant.name, seed, fraction, spec, overrides, upstream)
                    run.config_hash = run_hash(run, infer)
                    runs.append(run)
    return runs
