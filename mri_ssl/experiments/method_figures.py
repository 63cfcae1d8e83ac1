"""Each 2-D method's own figures in its demo (``mri-ssl demo cardiac | fundus | cmr``), drawn only from what
the runs wrote.

- Cardiac sequence classification: the test-split confusion matrix of every column (the evaluation's
  ``logs/evaluation/metrics.json``, ``mri_ssl.engines.ClassificationReport``), counts in the cells.
- Fundus CAMContrast: stage 1's CAM overlays of abnormal test images (the bundle's inference PNGs) with the outline
  of the lesions the demo placed and the pointing game of the stage-1 evaluation.
- CMR video-text: the per-epoch training history (``models/<run_name>/history.json``) and text-to-video retrieval
  examples, a report and its top-5 test studies, from the inference stage's ``predictions/embeddings.npz``.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from mri_ssl.experiments.figures import plot_seed_mean, pyplot, save_figure
from mri_ssl.experiments.grid import Grid
from mri_ssl.experiments.runner import CLASSIFICATION_FILE, EVALUATION_DIR, STATUS_OK, RunResult
from mri_ssl.experiments.tables import column_title
from mri_ssl.io.atomic import save_json


def read_confusion_matrix(run_folder: str | os.PathLike) -> tuple[np.ndarray, list[str], dict]:
    """``(counts [true, predicted], class names, the whole metrics.json)`` of a classifier run's evaluation.

    Raises ``OSError`` / ``ValueError`` naming the file when it is missing or holds no square matrix of its classes.
    """
    path = Path(run_folder) / EVALUATION_DIR / CLASSIFICATION_FILE
    metrics = json.loads(path.read_text())
    counts = np.asarray(metrics.get("confusion_matrix"), dtype=np.int64)
    names = list(metrics.get("class_names") or [])
    if counts.ndim != 2 or counts.shape != (len(names), len(names)):
        raise ValueError(f"{path} holds no {len(names)} x {len(names)} confusion matrix of its class_names")
    return counts, names, metrics


def plot_confusion_matrices(results: Sequence[RunResult], grid: Grid, task: str,
                            path: str | os.PathLike) -> Path | None:
    """One confusion matrix per column of ``task`` (first seed, largest label fraction): rows the true class, columns
    the predicted one, the count in each cell, the run's mean AUC and accuracy in the title. None if no run of the
    task finished with a readable matrix."""
    first_seed, fraction = min(grid.seeds), max(grid.label_fractions)
    runs = {r.run.mode: r for r in results if r.run.task == task and r.run.seed == first_seed
            and r.run.fraction == fraction and r.status == STATUS_OK}
    panels = []
    for mode in grid.columns_for(task):
        if mode in runs:
            try:
                panels.append((mode, *read_confusion_matrix(runs[mode].folder)))
            except (OSError, ValueError):
                continue  # a run without a matrix gets no panel; results.md says why it has no number
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.3), squeeze=False)
    for ax, (mode, counts, names, metrics) in zip(axes[0], panels):
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (row, col), count in np.ndenumerate(counts):
            light = count > counts.max() / 2
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8, color="white" if light else "black")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(f"{column_title(grid, mode)}\nmean AUC {metrics.get('mean_auc', float('nan')):.3f}, "
                     f"accuracy {metrics.get('accuracy', float('nan')):.3f}", fontsize=8)
    fig.suptitle(f"{task}: test split ({int(panels[0][1].sum())} images), {fraction:.0%} of labels, seed {first_seed}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))  # room for the suptitle above the panels' titles, the x labels below
    return save_figure(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------------
# CMR video-text: the training history and retrieval examples


HISTORY_FILE = "history.json"  # mri_ssl.engines.video_text.VideoTextTrainer: {"history": [{epoch, train_loss, ...}]}
EMBEDDINGS_FILE = Path("predictions") / "embeddings.npz"  # VideoTextInference: study_ids, video, reports, text
NOT_CURVES = ("epoch", "iteration", "world_size")


def read_training_history(run_folder: str | os.PathLike) -> list[dict]:
    """The per-epoch records of a video-text run (``models/<run_name>/history.json``); [] when there is none."""
    for path in sorted(Path(run_folder).glob(f"models/*/{HISTORY_FILE}")):
        try:
            history = json.loads(path.read_text()).get("history")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(history, list) and history:
            return [record for record in history if isinstance(record, dict)]
    return []


def plot_training_histories(results: Sequence[RunResult], grid: Grid, task: str,
                            path: str | os.PathLike) -> Path | None:
    """The losses (training and validation, one panel) and every other per-epoch figure the runs logged (one panel
    each, e.g. the CLIP logit scale) against the epoch, one faint line per seed and the mean over seeds bold.
    None when no finished run of ``task`` wrote a history."""
    histories = {r.run.seed: read_training_history(r.folder) for r in results
                 if r.run.task == task and r.status == STATUS_OK}
    histories = {seed: history for seed, history in histories.items() if history}
    if not histories:
        return None
    keys = list(dict.fromkeys(key for history in histories.values() for record in history for key, value in
                              record.items() if key not in NOT_CURVES and isinstance(value, (int, float))))
    losses = [key for key in keys if key.endswith("loss")]
    panels = ([("CLIP loss (train and validation)", losses)] if losses else []) + [
        (key, [key]) for key in keys if key not in losses]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (title, panel_keys) in zip(axes[0], panels):
        for number, key in enumerate(panel_keys):
            curves = []
            for history in histories.values():
                points = {int(r["epoch"]): float(r[key]) for r in history if r.get(key) is not None and "epoch" in r}
                if points:
                    ax.plot(list(points), list(points.values()), color=colours(number), alpha=0.3, linewidth=0.8)
                    curves.append(points)
            plot_seed_mean(ax, curves, colours(number), key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{grid.name}: training history of {task}, seeds {sorted(histories)}", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def retrieval_examples(embeddings_path: str | os.PathLike, manifest: dict, reports: int = 3,
                       top_k: int = 5) -> list[dict]:
    """Text-to-video retrieval examples from an inference run's ``embeddings.npz`` (the test studies' video
    embeddings and their own reports' text embeddings, in the same order): for the first study of each disease label
    (up to ``reports`` of them), its report and the ``top_k`` studies by similarity (best first), with the rank of
    the report's own study among all of them."""
    with np.load(embeddings_path, allow_pickle=False) as content:
        study_ids = [str(s) for s in content["study_ids"]]
        video, text = content["video"].astype(np.float64), content["text"].astype(np.float64)
        texts = [str(r) for r in content["reports"]]
    if video.shape[0] != len(study_ids) or text.shape[0] != len(texts) or len(texts) != len(study_ids):
        raise ValueError(f"{embeddings_path}: expected one report per study (the inference's default candidates), got "
                         f"{len(study_ids)} studies and {len(texts)} reports")
    labels = {study["study_id"]: study.get("label", "") for study in manifest.get("studies", [])}
    chosen, seen = [], set()
    for index, study_id in enumerate(study_ids):  # one example per disease label, in study order
        if labels.get(study_id) not in seen:
            seen.add(labels.get(study_id))
            chosen.append(index)
    examples = []
    for index in chosen[:reports]:
        scores = video @ text[index]
        order = np.argsort(-scores, kind="stable")
        examples.append({
            "report": texts[index], "study_id": study_ids[index], "label": labels.get(study_ids[index], ""),
            "rank_of_own_study": int(np.nonzero(order == index)[0][0]) + 1, "candidates": len(study_ids),
            "top": [{"study_id": study_ids[j], "label": labels.get(study_ids[j], ""), "score": float(scores[j])}
                    for j in order[:top_k]]})
    return examples


def _study_thumbnail(manifest: dict, study_id: str) -> np.ndarray | None:
    """A study's first cine frame beside its middle LGE slice (each scaled to [0, 1]); None if unreadable."""
    import nibabel as nib

    study = next((s for s in manifest.get("studies", []) if s.get("study_id") == study_id), None)
    if study is None:
        return None
    panels = []
    for kind in ("cine", "lge"):
        series = next((s for s in study.get("series", []) if s.get("type") == kind), None)
        if series is None:
            continue
        try:
            frames = np.asarray(nib.load(str(Path(manifest["root"]) / series["file"])).dataobj, dtype=np.float32)
        except (OSError, ValueError):
            continue
        frame = frames[..., 0 if kind == "cine" else frames.shape[-1] // 2] if frames.ndim == 3 else frames
        low, high = np.percentile(frame, [1, 99.5])
        panels.append(np.clip((np.rot90(frame) - low) / max(high - low, 1e-6), 0, 1))
    return np.concatenate(panels, axis=1) if panels else None


def plot_retrieval_examples(results: Sequence[RunResult], grid: Grid, task: str, manifest_path: str | os.PathLike,
                            path: str | os.PathLike) -> Path | None:
    """A row per example report of the first seed's trained model: the report, then its top-5 test studies (first
    cine frame | middle LGE slice, study id, disease label and similarity; the report's own study framed green).
    Also writes the examples as ``<path>.json``. None when no finished run wrote embeddings."""
    from mri_ssl.data.cardiac.cmr_studies import load_cmr_manifest  # lazy: ~1.2 s (the phantom); only `demo cmr`

    first_seed = min(grid.seeds)
    runs = [r for r in results if r.run.task == task and r.run.seed == first_seed and r.status == STATUS_OK
            and (r.folder / EMBEDDINGS_FILE).is_file()]
    if not runs:
        return None
    manifest = load_cmr_manifest(manifest_path)
    examples = retrieval_examples(runs[0].folder / EMBEDDINGS_FILE, manifest)
    if not examples:
        return None
    path = Path(path)
    save_json({"run": str(runs[0].folder), "examples": examples}, path.with_suffix(".json"))
    plt = pyplot()
    top_k = len(examples[0]["top"])
    fig, axes = plt.subplots(len(examples), top_k + 1, figsize=(2.6 * (top_k + 1), 2.5 * len(examples)),
                             squeeze=False, gridspec_kw={"width_ratios": [1.6] + [1] * top_k})
    for row, example in enumerate(examples):
        text_ax = axes[row, 0]
        text_ax.axis("off")
        text_ax.text(0, 1, "\n".join(textwrap.wrap(example["report"], 38)[:9]), fontsize=6.5, va="top",
                     family="monospace", transform=text_ax.transAxes)
        text_ax.set_title(f"report of {example['study_id']} ({example['label']})\nits study ranks "
                          f"{example['rank_of_own_study']} of {example['candidates']}", fontsize=7)
        for column, hit in enumerate(example["top"], start=1):
            ax = axes[row, column]
            thumbnail = _study_thumbnail(manifest, hit["study_id"])
            if thumbnail is not None:
                ax.imshow(thumbnail, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            own = hit["study_id"] == example["study_id"]
            for spine in ax.spines.values():
                spine.set_edgecolor("#2ca02c" if own else "#bdbdbd")
                spine.set_linewidth(3 if own else 0.5)
            ax.set_title(f"#{column} {hit['study_id']} ({hit['label']})\nsimilarity {hit['score']:.3f}", fontsize=7)
    fig.suptitle(f"{task}: text-to-video retrieval on the test split, trained model (seed {first_seed})\neach study: "
                 "first cine frame | middle LGE slice; green frame = the report's own study", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------------
# Fundus CAMContrast: stage 1's CAMs over the test images, with the lesions the demo placed


STAGE1_OVERLAYS = Path("predictions") / "stage1"  # inference.json on stage 1: <stem>_cam.png per test image
STAGE1_EVALUATION = Path("logs") / "stage1" / "evaluation"  # evaluate.json on stage 1: per_case.csv, summary.json


def read_stage1_localisation(run_folder: str | os.PathLike) -> tuple[dict, dict[str, dict]]:
    """Stage 1's CAM localisation from a fundus pretraining run: ``(summary, {image file name: per-case row})``
    (``pointing_game``, ``cam_iou``, per case ``pointing_hit``); empty dicts when the evaluation wrote none."""
    folder = Path(run_folder) / STAGE1_EVALUATION
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with open(folder / "per_case.csv") as handle:
            rows = {row["image"]: row for row in csv.DictReader(handle)}
    except (OSError, ValueError, KeyError):
        return {}, {}
    return (summary if isinstance(summary, dict) else {}), rows


def stage1_localisation_table(results: Sequence[RunResult], grid: Grid) -> str:
    """Markdown: stage 1's test-split ROC-AUC, CAM pointing game and CAM IoU against the placed lesions, mean +/- std
    over the finished pretraining runs; a line naming the missing file when a run wrote no stage-1 evaluation."""
    runs = [r for r in results if r.run.kind == "pretrain" and r.status == STATUS_OK]
    if not runs:
        return ""
    summaries = [read_stage1_localisation(r.folder)[0] for r in runs]
    found = [summary for summary in summaries if summary]
    lines = ["### Stage 1: the CAM classifier on the test split (CAMs against the placed lesions)", ""]
    if not found:
        return "\n".join(lines + [f"No stage-1 evaluation: `{STAGE1_EVALUATION / 'summary.json'}` is missing in "
                                  f"{len(runs)} of {len(runs)} finished runs, e.g. {runs[0].folder}."]) + "\n"
    names = ("roc_auc", "pointing_game", "cam_iou")
    lines += ["| seeds | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    cells = []
    for name in names:
        values = [float(summary[name]) for summary in found if isinstance(summary.get(name), (int, float))]
        cells.append(f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"
                     if values else "not in the summary")
    lines.append(f"| {len(found)} of {len(runs)} | " + " | ".join(cells) + " |")
    localised = [int(summary.get("localised_cases", 0)) for summary in found]
    lines += ["", f"pointing game: the share of abnormal test images ({', '.join(map(str, localised))} per run) whose "
                  "CAM peak falls inside a placed lesion; CAM IoU of CAM >= 0.5 with the lesions."]
    return "\n".join(lines) + "\n"


def plot_cam_overlays(results: Sequence[RunResult], grid: Grid, datalist: str | os.PathLike,
                      path: str | os.PathLike, images: int = 6) -> Path | None:
    """Stage 1's CAM overlays (the bundle's ``predictions/stage1/<stem>_cam.png``) of the first abnormal test images
    of the first seed, each with the placed lesions' outline (the demo's masks) and whether the CAM's maximum falls
    in a lesion (the pointing game of the stage-1 evaluation). None when no pretraining run wrote overlays."""
    from PIL import Image

    first_seed = min(grid.seeds)
    runs = [r for r in results if r.run.kind == "pretrain" and r.run.seed == first_seed and r.status == STATUS_OK
            and (r.folder / STAGE1_OVERLAYS).is_dir()]
    if not runs:
        return None
    run = runs[0]
    datalist = Path(datalist)
    entries = [e for e in json.loads(datalist.read_text()).get("test", []) if e.get("abnormal") and e.get("mask")]
    shown = []
    for entry in entries:
        overlay = run.folder / STAGE1_OVERLAYS / f"{Path(entry['image']).stem}_cam.png"
        if overlay.is_file():
            shown.append((entry, overlay))
        if len(shown) == images:
            break
    if not shown:
        return None
    summary, cases = read_stage1_localisation(run.folder)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.0), squeeze=False)
    for ax, (entry, overlay) in zip(axes[0], shown):
        picture = np.asarray(Image.open(overlay).convert("RGB"))
        mask = np.asarray(Image.open(datalist.parent / entry["mask"]).convert("L").resize(
            picture.shape[1::-1], Image.NEAREST)) > 0
        ax.imshow(picture)
        ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
        hit = (cases.get(Path(entry["image"]).name) or {}).get("pointing_hit", "")
        verdict = {"1": "CAM peak in a lesion", "0": "CAM peak outside"}.get(str(hit), "not scored")
        ax.set_title(f"{Path(entry['image']).stem}\n{verdict}", fontsize=7)
        ax.axis("off")
    scores = ", ".join(f"{name.replace('_', ' ')} {summary[name]:.3f}"
                       for name in ("pointing_game", "cam_iou", "roc_auc") if name in summary)
    fig.suptitle(f"stage-1 CAMs (abnormal class) on abnormal test images, seed {first_seed}; cyan: the placed "
                 f"lesions\n{scores or 'no stage-1 evaluation summary found'}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.85))  # room for the two-line suptitle
    return save_figure(fig, Path(path))
