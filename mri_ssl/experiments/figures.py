"""Figures of an experiment: bar charts of every metric per method and contrast, segmentation overlays per method.

Both read only what the runs wrote (evaluation summaries, per-case CSVs, the inference stage's label NIfTIs), so a
figure shows exactly the numbers in ``results.md``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mri_ssl.experiments.grid import Grid
from mri_ssl.experiments.runner import STATUS_OK, RunResult
from mri_ssl.experiments.tables import column_title, pretraining_title, probe_histories, probe_kind, row_title
from mri_ssl.io.atomic import atomic_output

MODE_COLOURS = {"random": "#9e9e9e", "base": "#1f77b4", "seqaug": "#ff7f0e", "seqinv": "#2ca02c",
                "simaug": "#9467bd", "seqinv_finetuned": "#8c564b"}
METRIC_TITLES = {"dice_mean": "Dice (mean over tissues)", "hd95_mm_mean": "HD95 (mm, mean over tissues)",
                 "psnr_db": "PSNR (dB, peak = clean data range)", "psnr_peak1_db": "PSNR (dB, peak 1 on z-scores)",
                 "psnr_gain_db": "PSNR gain over the noisy input (dB)"}


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib  # lazy: ~0.5 s to import, and only the commands that draw need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary name, then a rename) and close it."""
    with atomic_output(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    pyplot().close(fig)
    return path


def plot_seed_mean(ax, curves: Sequence[Mapping[int, float]], colour, label: str) -> None:
    """The mean over seeds of ``curves`` (each ``{step: value}`` of one seed) as a bold line with markers, at the steps
    every seed has; labelled with the number of seeds. Nothing when there are no common steps."""
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if common:
        ax.plot(common, [np.mean([c[step] for c in curves]) for step in common], color=colour, linewidth=2.0,
                marker="o", markersize=3, label=f"{label} (n={len(curves)})")


def plot_metric_bars(records: Sequence[Mapping], grid: Grid, path: str | os.PathLike) -> Path | None:
    """One panel per task and metric at the largest label fraction: a bar per method for each evaluated group
    (site [sequence]), in-domain groups first, with the standard deviation over seeds as an error bar."""
    plt = pyplot()
    fraction = max(grid.label_fractions)
    panels = [(spec.name, metric) for spec in grid.downstream for metric in spec.metrics
              if any(r["task"] == spec.name and r["metric"] == metric and r["n_seeds"] for r in records)]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7.0, 1.3 * 7), 2.8 * len(panels)), squeeze=False)
    for ax, (task, metric) in zip(axes[:, 0], panels):
        mine = [r for r in records if r["task"] == task and r["metric"] == metric and r["fraction"] == fraction]
        in_domain = {r["group"] for r in mine if r["domain"] == "in domain"}
        groups = sorted({r["group"] for r in mine}, key=lambda g: (g not in in_domain, g))
        columns = grid.columns_for(task)
        width = 0.8 / len(columns)
        for position, mode in enumerate(columns):
            cells = {r["group"]: r for r in mine if r["mode"] == mode}
            means = [cells[g]["mean"] if g in cells and cells[g]["n_seeds"] else np.nan for g in groups]
            stds = [cells[g]["std"] if g in cells and cells[g]["n_seeds"] > 1 else 0.0 for g in groups]
            x = np.arange(len(groups)) + (position - (len(columns) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=2, label=column_title(grid, mode),
                   color=MODE_COLOURS.get(mode))
        labels = [row_title(g) + ("\n(in domain)" if g in in_domain else "") for g in groups]
        ax.set_xticks(np.arange(len(groups)), labels, fontsize=8)
        direction = next(r["direction"] for r in mine)
        ax.set_ylabel(METRIC_TITLES.get(metric, metric), fontsize=8)
        ax.set_title(f"{task}: {metric} ({direction} is better), {fraction:.0%} of labels, "
                     f"seeds {list(grid.seeds)}", fontsize=9)
        if metric.startswith("dice"):
            ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    legend = {}  # every method once, from whichever panel shows it (a variant may apply to some tasks only)
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), ncol=len(legend), fontsize=8, loc="upper center", frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return save_figure(fig, Path(path))


def _per_case_dice(folder: Path) -> dict[str, float]:
    """Image path -> mean Dice, from a run's evaluation per-case CSV."""
    try:
        with open(folder / "logs" / "evaluation" / "per_case.csv") as handle:
            return {row["image"]: float(row["dice_mean"]) for row in csv.DictReader(handle) if row.get("dice_mean")}
    except (OSError, ValueError, KeyError):
        return {}


def _axial(volume: np.ndarray, z: int) -> np.ndarray:
    # NIfTI (x, y, z) in RAS: anterior up, the patient's left on the image's right, as radiologists read.
    return np.rot90(volume[:, :, z])


def plot_segmentation_overlays(results: Sequence[RunResult], grid: Grid, task: str, datalist: str | os.PathLike,
                               path: str | os.PathLike, split: str = "test") -> Path | None:
    """A grid of axial slices of one test subject: a column per test image (the in-domain contrast, unseen contrasts,
    the real image), a row for the reference labels and one per method (its first seed), each prediction drawn over
    its image with the case's Dice in the title. Needs label NIfTIs in the run folders' ``predictions/`` (an inference
    stage, or the evaluation with ``save_predictions``).
    """
    import nibabel as nib

    plt = pyplot()
    datalist = Path(datalist)
    content = json.loads(datalist.read_text())
    entries = content.get(split, [])
    if not entries:
        return None
    subject = entries[0].get("subject")
    entries = [e for e in entries if e.get("subject") == subject]
    first_seed = min(grid.seeds)
    fraction = max(grid.label_fractions)
    runs = {r.run.mode: r for r in results if r.run.task == task and r.run.seed == first_seed
            and r.run.fraction == fraction and r.status == STATUS_OK}
    methods = [mode for mode in grid.columns_for(task) if mode in runs]
    if not methods:
        return None
    label = np.asarray(nib.load(str(datalist.parent / entries[0]["label"])).dataobj).astype(np.int64)
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))
    colours = plt.get_cmap("tab10")
    n_classes = int(label.max()) + 1

    def overlay(ax, image: np.ndarray, labels: np.ndarray | None, title: str) -> None:
        slice_ = _axial(image, z)
        top = np.percentile(slice_[_axial(label, z) > 0], 99.5) if (label[:, :, z] > 0).any() else slice_.max()
        ax.imshow(slice_, cmap="gray", vmin=0 if slice_.min() >= 0 else slice_.min(), vmax=top)
        if labels is not None:
            rgba = np.zeros(slice_.shape + (4,))
            classes = _axial(labels, z)
            for value in range(1, max(n_classes, int(classes.max()) + 1)):
                rgba[classes == value] = (*colours(value)[:3], 0.45)
            ax.imshow(rgba, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    rows = 1 + len(methods)
    fig, axes = plt.subplots(rows, len(entries), figsize=(1.9 * len(entries), 2.0 * rows), squeeze=False)
    dice = {mode: _per_case_dice(runs[mode].folder) for mode in methods}
    for column, entry in enumerate(entries):
        image_path = datalist.parent / entry["image"]
        image = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
        name = f"{entry.get('site', '')} {entry.get('sequence', '')}".strip()
        overlay(axes[0, column], image, label, f"reference\n{name}")
        relative = Path(entry["image"])
        stem = relative.name.split(".nii")[0]
        for row, mode in enumerate(methods, start=1):
            prediction_path = runs[mode].folder / "predictions" / relative.parent / f"{stem}_seg.nii.gz"
            title = column_title(grid, mode)
            if prediction_path.is_file():
                prediction = np.asarray(nib.load(str(prediction_path)).dataobj).astype(np.int64)
                score = dice[mode].get(str(image_path)) or dice[mode].get(str(image_path.resolve()))
                overlay(axes[row, column], image, prediction,
                        f"{title}\nDice {score:.3f}" if score is not None and math.isfinite(score) else title)
            else:
                axes[row, column].axis("off")
                axes[row, column].set_title(f"{title}\n(no prediction)", fontsize=7)
    # tab10's colours in class order, as drawn by ``overlay``.
    legend = ", ".join(f"{name} = {['blue', 'orange', 'green', 'red', 'purple', 'brown'][int(value) % 6]}"
                       for value, name in content.get("labels", {}).items() if int(value) > 0)
    fig.suptitle(f"{task}: test subject {subject}, axial slice {z}; trained on the in-domain contrast only "
                 f"(seed {first_seed})\n{legend}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))


LEARNING_CURVE_PANELS = (  # the 3-D probe: cross-sequence retrieval of held-out crops
    ("features_top1", "cross-sequence top-1, pooled features", "top1_chance"),
    ("projection_top1", "cross-sequence top-1, projections", "top1_chance"),
    ("ntxent", "held-out NT-Xent (probe set)", "ntxent_chance"),
    ("train_loss", "training loss (NT-Xent + reconstruction)", None),
)
CLASSIFICATION_CURVE_PANELS = (  # the 2-D probe: a linear probe on frozen features, scored on the validation split
    ("auc", "linear-probe macro ROC-AUC (validation split)", None),
    ("lesion_auc", "lesion-patch probe ROC-AUC (validation crops)", None),  # fundus: lesion / lesion-free crops
    ("accuracy", "linear-probe accuracy (dotted: majority class)", "majority_rate"),
    ("spread", "projection spread (dotted: healthy 1/sqrt(d))", "spread_healthy"),
    ("train_loss", "training loss", None),
)
VIDEO_TEXT_CURVE_PANELS = (  # the video-text probe: retrieval among the validation studies and their reports
    ("RSUM", "retrieval RSUM (validation split; dotted: chance)", "rsum_chance"),
    ("clip_loss", "held-out CLIP loss (dotted: chance ln N)", "clip_loss_chance"),
    ("spread", "projection spread (dotted: healthy 1/sqrt(d))", "spread_healthy"),
    ("train_loss", "training loss (CLIP)", None),
)
CURVE_PANELS_BY_KIND = {"retrieval": LEARNING_CURVE_PANELS, "video_text": VIDEO_TEXT_CURVE_PANELS,
                        "classification": CLASSIFICATION_CURVE_PANELS}
PROBED_DATA_BY_KIND = {"retrieval": "held-out crops, each under two sequences",
                       "video_text": "validation studies and reports",
                       "classification": "validation images (linear probe)"}


def plot_learning_curves(results: Sequence[RunResult], grid: Grid, path: str | os.PathLike) -> Path | None:
    """The representation probe and the losses against training steps, one line per pretraining mode (the mean over
    seeds, each seed faint), the random-init encoder's value dashed in grey and chance dotted. Reads the probe
    histories the pretraining runs wrote (``logs/probe.json``, kept in their ``result.json``); None if there are none.
    """
    histories = probe_histories(results)
    if not histories:
        return None
    plt = pyplot()
    first = next(iter(histories.values()))[0]["history"][0]
    kind = probe_kind(first)
    # The panels the probe has values for (the training loss is not in the step-0 record: always kept).
    panels = [panel for panel in CURVE_PANELS_BY_KIND[kind] if panel[0] in first or panel[0] == "train_loss"]
    columns = max(2, math.ceil(len(panels) / 2))
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 7.0), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (key, title, chance_key) in zip(axes.flat, panels):
        chance, random_init = [], []
        for mode in [m for m in grid.modes if m in histories]:
            colour = MODE_COLOURS.get(mode)
            curves = []
            for probe in histories[mode]:
                points = [(h["iteration"], h[key]) for h in probe["history"] if h.get(key) is not None]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                    curves.append(dict(points))
                if chance_key and probe["history"]:
                    chance.append(probe["history"][0][chance_key])
                if key in (probe.get("random_init") or {}):
                    random_init.append(probe["random_init"][key])
            plot_seed_mean(ax, curves, colour, pretraining_title(mode))
        if random_init:
            ax.axhline(float(np.mean(random_init)), color="#616161", linestyle="--", linewidth=1.2,
                       label="random init")
        if chance:
            ax.axhline(float(np.mean(chance)), color="black", linestyle=":", linewidth=1.0, label="chance")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="best")
    crops = (f" and {first['lesion_n']} validation crops (lesion-patch probe, {first.get('lesion_crop_size', '?')} px)"
             if "lesion_n" in first else "")
    fig.suptitle(f"{grid.name}: representation probe on {first['n']} {PROBED_DATA_BY_KIND[kind]}{crops}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(path))
