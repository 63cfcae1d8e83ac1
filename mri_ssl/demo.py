"""`mri-ssl demo`: the whole sequence-invariant method on the embedded data, in minutes on a CPU.

Stage 1 builds the MNI152 qMRI phantom, simulates every sequence and writes NIfTI files and a montage. Stage 2 runs
the grid ``experiments/demo.yaml`` through the experiment runner, i.e. through the same bundles a user runs
(``python -m monai.bundle run``): slim encoders pretrained in the Base, SeqAug and SeqInv modes, frozen under
U-Net decoders for tissue segmentation and denoising trained on one simulated contrast, with a random-init
baseline, evaluated on unseen simulated contrasts and on the real MNI152 T1 image. Stage 3 draws the figures and
prints the results table. Every number comes from those runs.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mri_ssl.data.brain.demo import write_phantom_files
from mri_ssl.errors import InputError
from mri_ssl.experiments import collect, load_grid, run_grid, write_tables
from mri_ssl.experiments.figures import plot_learning_curves, plot_metric_bars, plot_segmentation_overlays
from mri_ssl.experiments.grid import Grid, expand_placeholders
from mri_ssl.experiments.memory import ProcessTreeMemory
from mri_ssl.experiments.runner import STATUS_OK, failure_report, require_trusted
from mri_ssl.experiments.tables import format_plain_tables, probe_markdown
from mri_ssl.io.atomic import atomic_output, save_json
from mri_ssl.io.nifti import save_nifti
from mri_ssl.physics.phantom import TISSUE_CLASSES, mni152_phantom, mprage_fidelity
from mri_ssl.physics.protocols import SEQUENCES, TYPICAL_PROTOCOLS, protocol_item, sample_protocol
from mri_ssl.physics.simulate import simulate

SEQUENCE_TITLES = {"fse": "FSE", "gre": "GRE", "flair": "FLAIR", "mprage": "MPRAGE"}


def describe_protocol(sequence: str, protocol: dict[str, float]) -> str:
    """A short human label in ms and degrees, e.g. ``TR 9000 TE 90 TI 2500 ms``."""
    parts = [f"TR {protocol['tr'] * 1000:.0f}", f"TE {protocol['te'] * 1000:.1f}"]
    if "ti" in protocol:
        parts.append(f"TI {protocol['ti'] * 1000:.0f}")
    text = " ".join(parts) + " ms"
    if "flip_angle" in protocol:
        text += f" FA {math.degrees(protocol['flip_angle']):.0f}°"
    return text


def _axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    # NIfTI axes are (x, y, z) in RAS; rotate so anterior is up and the patient's left is on the right of the image.
    return np.rot90(volume[:, :, z])


def write_montage(
    images: dict[str, list[tuple[str, np.ndarray]]],
    maps: dict[str, np.ndarray],
    reference_t1: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
) -> Path:
    """Save a PNG: one row per sequence (one column per protocol), and a last row of the maps and the real T1.

    Grey levels are windowed on the brain (99.5th percentile of brain voxels), so bright scalp saturates instead of
    compressing the grey/white contrast a reader looks for.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((labels == TISSUE_CLASSES.index("wm")).sum(axis=(0, 1))))
    brain = _axial_slice(np.isin(labels, [TISSUE_CLASSES.index(c) for c in ("csf", "gm", "wm")]), z)

    def window(axial: np.ndarray) -> float:
        top = float(np.percentile(axial[brain], 99.5)) if brain.any() else float(axial.max())
        return 1.1 * top + 1e-12  # a little headroom so white matter is not flat white

    columns = max(max(len(v) for v in images.values()), 6)
    fig, axes = plt.subplots(len(images) + 1, columns, figsize=(2.2 * columns, 2.6 * (len(images) + 1)))
    for ax in axes.flat:
        ax.axis("off")
    for row, (sequence, items) in enumerate(images.items()):
        for col, (label, volume) in enumerate(items):
            axial = _axial_slice(volume, z)
            axes[row, col].imshow(axial, cmap="gray", vmin=0, vmax=window(axial))
            axes[row, col].set_title(f"{SEQUENCE_TITLES[sequence]}\n{label}", fontsize=7)
    last = len(images)
    panels = [("real MNI152 T1", reference_t1, "gray"), ("labels", labels, "tab10")]
    panels += [(name, maps[name], "magma") for name in ("pd", "r1", "r2s", "mt") if name in maps]
    for col, (title, volume, cmap) in enumerate(panels[:columns]):
        axial = _axial_slice(volume, z)
        vmax = window(axial) if cmap != "tab10" else 9
        axes[last, col].imshow(axial, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        axes[last, col].set_title(title, fontsize=7)
    fig.suptitle("mri_ssl: sequences simulated from the MNI152 qMRI phantom (axial slice)", fontsize=10)
    fig.tight_layout()
    with atomic_output(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def run_simulation_stage(
    out_dir: str | os.PathLike = "demo_out",
    resolution_mm: float = 1.0,
    random_protocols: int = 3,
    seed: int = 0,
    fused: bool = False,
    progress: bool = True,
) -> dict:
    """Stage 1 of the demo; returns its summary (``run_demo`` writes it to ``out_dir/summary.json``).

    Writes ``phantom/{pd,r1,r2,r2s,mt,label}.nii.gz``, ``simulated/<sequence>_<k>.nii.gz`` (k = 0 is the typical
    protocol, 1.. are random ones) each with a JSON sidecar of its protocol, and ``montage.png``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    bar = tqdm(total=3 + len(SEQUENCES), desc="demo stage 1", unit="step", disable=not progress)

    bar.set_postfix_str("building MNI152 phantom")
    phantom = mni152_phantom(resolution_mm)
    write_phantom_files(out_dir / "phantom", phantom.maps, phantom.labels, phantom.affine)
    bar.update()

    generator = torch.Generator().manual_seed(int(seed))
    images: dict[str, list[tuple[str, np.ndarray]]] = {}
    simulated = []
    for sequence in SEQUENCES:
        bar.set_postfix_str(f"simulating {sequence}")
        typical = {k: torch.tensor([float(v)], dtype=torch.float64) for k, v in TYPICAL_PROTOCOLS[sequence].items()}
        drawn = sample_protocol(sequence, random_protocols, generator) if random_protocols > 0 else None
        protocol = typical if drawn is None else {k: torch.cat([typical[k], drawn[k]]) for k in typical}
        batch = simulate(phantom.maps, sequence, protocol, fused=fused)
        images[sequence] = []
        for k in range(batch.shape[0]):
            item = protocol_item(protocol, k)
            path = out_dir / "simulated" / f"{sequence}_{k}.nii.gz"
            kind = "typical" if k == 0 else "random"
            save_nifti(batch[k], phantom.affine, path, description=f"mri_ssl {sequence} {kind}")
            sidecar = {"sequence": sequence, "protocol": item, "kind": kind, "units": "seconds, radians",
                       "source": "mri_ssl MNI152 qMRI phantom"}
            save_json(sidecar, path.with_name(path.name.replace(".nii.gz", ".json")))
            simulated.append({"file": str(path.relative_to(out_dir)), **sidecar})
            images[sequence].append((("typical " if k == 0 else "") + describe_protocol(sequence, item),
                                     batch[k].numpy()))
        bar.update()

    bar.set_postfix_str("fidelity vs real MNI152 T1")
    fidelity = mprage_fidelity(phantom)
    bar.update()

    bar.set_postfix_str("montage")
    maps_np = {k: v.numpy() for k, v in phantom.maps.items()}
    montage = write_montage(images, maps_np, phantom.reference_t1.numpy(), phantom.labels.numpy(),
                            out_dir / "montage.png")
    bar.update()
    bar.close()

    summary = {
        "stage": "simulation",
        "resolution_mm": float(resolution_mm),
        "shape": list(phantom.labels.shape),
        "seed": int(seed),
        "fidelity_mprage_vs_real_t1": fidelity,
        "montage": str(montage.relative_to(out_dir)),
        "simulated": simulated,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary


def format_simulation_summary(summary: dict) -> str:
    """The table of stage 1: every simulated image and the phantom's fidelity."""
    lines = [f"{'sequence':<8} {'kind':<8} {'protocol':<36} file"]
    for item in summary["simulated"]:
        lines.append(f"{item['sequence']:<8} {item['kind']:<8} "
                     f"{describe_protocol(item['sequence'], item['protocol']):<36} {item['file']}")
    fidelity = summary["fidelity_mprage_vs_real_t1"]
    lines.append(
        f"MPRAGE vs real MNI152 T1 inside the brain: Pearson r = {fidelity['pearson_r']:.3f}, "
        f"Spearman rho = {fidelity['spearman_r']:.3f} ({int(fidelity['voxels'])} voxels)"
    )
    lines.append(f"montage: {summary['montage']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Stages 2 and 3: the comparison of pretraining strategies, through the bundles

DEMO_GRID = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"


def load_demo_grid(grid_path: str | os.PathLike | None = None, bundles_dir: str | os.PathLike | None = None,
                   seeds: Sequence[int] | None = (0,)) -> Grid:
    """The demo's grid (``experiments/demo.yaml`` of the checkout, or ``grid_path``), restricted to ``seeds``."""
    path = Path(grid_path) if grid_path else DEMO_GRID
    if not path.is_file():
        raise InputError(path, "the demo's experiment grid was not found: run the demo from a checkout of mri_ssl "
                               "(it needs experiments/ and bundles/), or pass --grid and --bundles-dir")
    grid = load_grid(path, bundles_dir=bundles_dir)
    # A variant may run for fewer tasks in the demo than in the full grid (its `demo_tasks`): the demo's time budget.
    grid = replace(grid, variants=tuple(replace(v, tasks=v.demo_tasks) if v.demo_tasks else v for v in grid.variants))
    return replace(grid, seeds=tuple(dict.fromkeys(int(s) for s in seeds))) if seeds else grid


def draw_figures(grid: Grid, results, records, out_dir: Path) -> list[str]:
    """The bar charts of every metric and, for segmentation tasks that write label maps (an inference stage, or
    ``save_predictions`` in the evaluation), the segmentation overlays."""
    figures = []
    bars = plot_metric_bars(records, grid, out_dir / "figures" / "metrics.png")
    if bars:
        figures.append(str(bars.relative_to(out_dir)))
    curves = plot_learning_curves(results, grid, out_dir / "figures" / "learning_curves.png")
    if curves:
        figures.append(str(curves.relative_to(out_dir)))
    for spec in grid.downstream:
        data_dir = spec.overrides.get("demo_data_dir")
        writes_label_maps = bool(spec.inference) or spec.overrides.get("save_predictions") is True
        if not writes_label_maps or not data_dir or spec.bundle_dir.name != "mri_segmentation":
            continue
        datalist = Path(expand_placeholders(data_dir, {"out_dir": out_dir})) / "datalist.json"
        if datalist.is_file():
            path = plot_segmentation_overlays(results, grid, spec.name, datalist,
                                              out_dir / "figures" / f"{spec.name}_overlays.png")
            if path:
                figures.append(str(path.relative_to(out_dir)))
    return figures


def run_grid_stage(grid: Grid, out_dir: Path, progress: bool, jobs: int,
                   figures: Callable[[Grid, list, list, Path], list[str]],
                   notes: Callable[[list, Grid], str] | None = None) -> tuple[dict, dict]:
    """Stages 2 and 3 of a demo: run ``grid`` (runs in ``out_dir/runs/``, reused when unchanged), write
    ``results.md`` / ``results.csv`` / ``runs.csv`` / ``grid.yaml`` and the ``figures`` (a function of the grid, the
    results, the table records and ``out_dir`` returning the figure paths relative to it); ``notes`` (of the results and
    the grid) gives a method's own text printed after the tables. Returns the summary's ``experiment`` entry and
    the stages' seconds."""
    seconds = {}
    stage_started = time.perf_counter()
    results = run_grid(grid, out_dir, progress=progress, trust_bundles=True, jobs=jobs)  # scanned by the caller
    seconds["bundle_runs"] = round(time.perf_counter() - stage_started, 2)
    stage_started = time.perf_counter()
    tables = write_tables(grid, results, out_dir)
    records = collect(grid, results)
    drawn = figures(grid, results, records, out_dir)
    seconds["tables_and_figures"] = round(time.perf_counter() - stage_started, 2)
    experiment = {
        "grid": "grid.yaml", "seeds": list(grid.seeds), "modes": list(grid.modes), "jobs": jobs,
        "cpu_seconds_of_new_runs": round(sum(r.cpu_seconds or 0.0 for r in results if not r.cached), 1),
        "reused_runs": sum(r.cached for r in results),
        "runs": len(results), "finished": sum(r.status == STATUS_OK for r in results),
        "failed": [r.run.label for r in results if r.status != STATUS_OK],
        "failure_report": failure_report(results, out_dir / "runs.csv"),
        "results_markdown": str(tables["markdown"].relative_to(out_dir)),
        "results_csv": str(tables["csv"].relative_to(out_dir)), "figures": drawn,
        "table": format_plain_tables(records, grid),
        "probe_table": probe_markdown(results, grid),
        "notes": notes(results, grid) if notes else "",  # a method's own table, e.g. fundus stage 1's CAMs
    }
    return experiment, seconds


def run_demo(
    out_dir: str | os.PathLike = "demo_out",
    resolution_mm: float = 1.0,
    random_protocols: int = 3,
    seed: int = 0,
    fused: bool = False,
    progress: bool = True,
    seeds: Sequence[int] = (0,),
    grid_path: str | os.PathLike | None = None,
    bundles_dir: str | os.PathLike | None = None,
    simulation_only: bool = False,
    trust_bundles: bool = False,
    jobs: int = 1,
) -> dict:
    """The demo; returns the summary written to ``out_dir/summary.json``.

    Stage 1 (``run_simulation_stage``) writes the phantom, the simulated images and ``montage.png``. Unless
    ``simulation_only``, stage 2 runs the demo grid for ``seeds`` (runs in ``out_dir/runs/``, reused when
    unchanged), and stage 3 writes ``results.md`` / ``results.csv`` (the paper's table layout), ``runs.csv``,
    ``grid.yaml`` (the configuration used) and ``figures/*.png``. ``jobs`` bundle runs go at once, each with its
    share of the CPU threads. ``peak_memory_gb`` is the largest summed resident memory of the demo and its runs.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()  # bundle runs work in their own folders: hand them absolute paths
    grid = None if simulation_only else load_demo_grid(grid_path, bundles_dir, seeds)  # check it before any work
    if grid is not None and not trust_bundles:
        require_trusted(grid)
    with ProcessTreeMemory() as memory:  # the demo and its bundle runs together
        summary = run_simulation_stage(out_dir, resolution_mm, random_protocols, seed, fused, progress)
        summary["stage_seconds"] = {"simulation": summary.pop("seconds")}
        if grid is not None:
            summary["experiment"], seconds = run_grid_stage(grid, out_dir, progress, jobs, draw_figures)
            summary["stage_seconds"].update(seconds)
            summary["stage"] = "complete"
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["peak_memory_gb"] = memory.peak_gb
    save_json(summary, out_dir / "summary.json")
    return summary


def format_summary(summary: dict) -> str:
    """What the demo prints at the end: stage 1's table (the 3-D demo's), then the results and probe tables and where
    everything is."""
    lines = [format_simulation_summary(summary)] if "simulated" in summary else [summary.get("title", "")]
    experiment = summary.get("experiment")
    if experiment:
        if experiment["failed"]:
            lines += ["", f"INCOMPLETE RESULTS: {len(experiment['failed'])} of {experiment['runs']} runs did not "
                          "finish; cells marked 'failed' or 'n/a' have no number, and the others cover fewer runs"]
        lines += ["", experiment["table"] or "(no finished run: nothing to tabulate)"]
        if experiment.get("probe_table"):
            lines += ["", experiment["probe_table"]]
        if experiment.get("notes"):
            lines += ["", experiment["notes"]]
        lines.append(f"results: {experiment['results_markdown']}, {experiment['results_csv']}; figures: "
                     f"{', '.join(experiment['figures'] + ([summary['montage']] if 'montage' in summary else []))}")
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in summary["stage_seconds"].items())
    lines.append(f"total {summary['seconds']:.0f} s ({stages}); peak memory {summary['peak_memory_gb']} GB")
    if experiment:
        lines.append(f"bundle runs: {experiment['runs'] - experiment['reused_runs']} run, {experiment['reused_runs']} "
                     f"reused, {experiment['cpu_seconds_of_new_runs'] / 60:.1f} CPU-minutes, {experiment['jobs']} at "
                     f"once")
        lines += experiment.get("failure_report", [])  # last, where a user looks: why the exit status is 1
    return "\n".join(lines)
