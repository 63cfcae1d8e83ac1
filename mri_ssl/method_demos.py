"""`mri-ssl demo METHOD` (cardiac, fundus, cmr): one 2-D method end to end on its embedded data, through its bundle, in
minutes on a CPU.

Each method's demo is a grid YAML under ``experiments/`` (``demo_<method>.yaml``) run by the experiment runner, as
the 3-D demo (``mri_ssl.demo``) runs ``experiments/demo.yaml``: the bundle's own configs (``cpu_demo.json``), the
pretrained encoder against a random-init one of the same shape, the label-free representation probe at step 0, at
the end and on the random-init encoder, and the downstream score on the test split. Every demo writes
``results.md`` / ``results.csv`` / ``runs.csv`` / ``grid.yaml``, ``figures/learning_curves.png`` (probe and loss
against steps, from the pretraining runs' probe histories) and the method's own figure, and ``summary.json``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from mri_ssl.errors import InputError
from mri_ssl.experiments import load_grid
from mri_ssl.experiments.figures import plot_learning_curves
from mri_ssl.experiments.grid import Grid, expand_placeholders
from mri_ssl.experiments.memory import ProcessTreeMemory
from mri_ssl.experiments.method_figures import (plot_cam_overlays, plot_confusion_matrices,
                                                plot_retrieval_examples, plot_training_histories,
                                                stage1_localisation_table)
from mri_ssl.experiments.runner import require_trusted
from mri_ssl.io.atomic import save_json

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


def _relative(paths: Sequence[Path | None], out_dir: Path) -> list[str]:
    return [str(path.relative_to(out_dir)) for path in paths if path is not None]


def cardiac_figures(grid: Grid, results, records, out_dir: Path) -> list[str]:
    """The probe's learning curves and, per downstream task, the test-split confusion matrices."""
    figures = [plot_learning_curves(results, grid, out_dir / "figures" / "learning_curves.png")]
    figures += [plot_confusion_matrices(results, grid, spec.name, out_dir / "figures" / f"{spec.name}_confusion.png")
                for spec in grid.downstream]
    return _relative(figures, out_dir)


def _data_dir(grid: Grid, out_dir: Path) -> Path | None:
    """The embedded data folder the grid's runs share (its common ``demo_data_dir``), if it exists."""
    specs = ([grid.pretraining] if grid.pretraining else []) + list(grid.downstream)
    for spec in specs:
        data_dir = spec.overrides.get("demo_data_dir")
        folder = Path(expand_placeholders(data_dir, {"out_dir": out_dir})) if data_dir else None
        if folder is not None and folder.is_dir():
            return folder
    return None


def fundus_figures(grid: Grid, results, records, out_dir: Path) -> list[str]:
    """The probe's learning curves (when the pretraining wrote a probe history) and stage 1's CAM overlays with the
    placed lesions."""
    figures = [plot_learning_curves(results, grid, out_dir / "figures" / "learning_curves.png")]
    data_dir = _data_dir(grid, out_dir)
    if data_dir is not None and (data_dir / "datalist.json").is_file():
        figures.append(plot_cam_overlays(results, grid, data_dir / "datalist.json",
                                         out_dir / "figures" / "cam_overlays.png"))
    return _relative(figures, out_dir)


def cmr_figures(grid: Grid, results, records, out_dir: Path) -> list[str]:
    """Per downstream task: the training history (losses against epochs) and retrieval examples (a report and its
    top-5 test studies) from the phantom the runs wrote (the task's ``demo_data_dir``)."""
    figures = []
    for spec in grid.downstream:
        figures.append(plot_training_histories(results, grid, spec.name,
                                               out_dir / "figures" / f"{spec.name}_training.png"))
        manifest = _data_dir(replace(grid, pretraining=None, downstream=(spec,)), out_dir)
        if manifest is not None:
            figures.append(plot_retrieval_examples(results, grid, spec.name, manifest,
                                                   out_dir / "figures" / f"{spec.name}_examples.png"))
    return _relative(figures, out_dir)


@dataclass(frozen=True)
class MethodDemo:
    """A method's demo: its grid file (in ``experiments/``), what it shows, and how its figures are drawn."""

    grid_file: str
    title: str
    figures: Callable[[Grid, list, list, Path], list[str]]
    notes: Callable[[list, Grid], str] | None = None  # the method's own table, printed after the others


METHOD_DEMOS = {
    "cardiac": MethodDemo(
        "demo_cardiac.yaml",
        "cardiac sequence classification (bundle cardiac_sequence_classification): SimSiam ViT vs random init",
        cardiac_figures),
    "fundus": MethodDemo(
        "demo_fundus.yaml",
        "fundus CAMContrast (bundle fundus_camcontrast): CAM classifier, heatmap-guided contrastive pretraining, "
        "transfer vs random init", fundus_figures, stage1_localisation_table),
    "cmr": MethodDemo(
        "demo_cmr.yaml",
        "CMR video-text retrieval (bundle cmr_video_text): CLIP-trained model vs the same network untrained",
        cmr_figures),
}
DEFAULT_METHOD = "brain"  # `mri-ssl demo` alone: the 3-D sequence-invariant demo (mri_ssl.demo)
METHODS = (DEFAULT_METHOD,) + tuple(METHOD_DEMOS)


def load_method_grid(method: str, grid_path: str | os.PathLike | None = None,
                     bundles_dir: str | os.PathLike | None = None, seeds: Sequence[int] | None = (0,)) -> Grid:
    """The method's demo grid (``experiments/demo_<method>.yaml`` of the checkout, or ``grid_path``), restricted to
    ``seeds``."""
    if method not in METHOD_DEMOS:
        raise InputError("method", f"must be one of {list(METHOD_DEMOS)} (or {DEFAULT_METHOD!r}, the 3-D demo), "
                                   f"got {method!r}")
    path = Path(grid_path) if grid_path else EXPERIMENTS_DIR / METHOD_DEMOS[method].grid_file
    if not path.is_file():
        raise InputError(path, f"the {method} demo's experiment grid was not found: run the demo from a checkout of "
                               "mri_ssl (it needs experiments/ and bundles/), or pass --grid and --bundles-dir")
    grid = load_grid(path, bundles_dir=bundles_dir)
    return replace(grid, seeds=tuple(dict.fromkeys(int(s) for s in seeds))) if seeds else grid


def run_method_demo(method: str, out_dir: str | os.PathLike, seeds: Sequence[int] = (0,), progress: bool = True,
                    grid_path: str | os.PathLike | None = None, bundles_dir: str | os.PathLike | None = None,
                    trust_bundles: bool = False, jobs: int = 1) -> dict:
    """Run one method's demo grid for ``seeds`` into ``out_dir``; return the summary written to
    ``out_dir/summary.json`` (the experiment, stage seconds, ``peak_memory_gb`` of the demo and its runs together).
    Finished runs are reused when unchanged."""
    from mri_ssl.demo import run_grid_stage  # lazy: the CLI reads METHODS without importing the 3-D simulator

    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()  # bundle runs work in their own folders: hand them absolute paths
    grid = load_method_grid(method, grid_path, bundles_dir, seeds)  # checked before any work
    if not trust_bundles:
        require_trusted(grid)
    with ProcessTreeMemory() as memory:
        experiment, seconds = run_grid_stage(grid, out_dir, progress, jobs, METHOD_DEMOS[method].figures,
                                             METHOD_DEMOS[method].notes)
    summary = {"stage": "complete", "method": method, "title": f"mri-ssl demo {method}: {METHOD_DEMOS[method].title}",
               "stage_seconds": seconds, "experiment": experiment,
               "seconds": round(time.perf_counter() - started, 2), "peak_memory_gb": memory.peak_gb}
    save_json(summary, out_dir / "summary.json")
    return summary
