"""Gather a grid's evaluation summaries into the paper's table layout (Chalcroft et al. 2025, Tables 1-3).

One table per downstream task and metric: rows are the evaluated ``site [sequence]`` groups, split into *In domain*
and *Out of domain* by the task's ``in_domain`` rule; columns are label fractions x pretraining modes. A cell is the
mean +/- sample standard deviation **over seeds** of the run's mean over the group's test cases (``(n=k)`` when
only k seeds finished; ``failed`` when none did). As in the paper, the best cell of each row within a fraction is
bold and the second best underlined, using the metric's direction (higher / lower is better).

``results.csv`` has one line per task, metric, group, fraction and mode, with the per-seed values, so any other
layout can be built from it.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mri_ssl.experiments.grid import Grid, StageSpec
from mri_ssl.experiments.runner import STATUS_OK, RunResult
from mri_ssl.io.atomic import atomic_write_text

MODE_TITLES = {"random": "Random init", "base": "Base", "seqaug": "SeqAug", "seqinv": "SeqInv",
               "simaug": "Sim. aug. (random init)", "seqinv_finetuned": "SeqInv, fine-tuned", "simsiam": "SimSiam",
               "camcontrast": "CAMContrast"}
IN_DOMAIN, OUT_OF_DOMAIN = "in domain", "out of domain"
GROUPING = "by_site_sequence"
OVERALL_GROUP = "(all)/(all)"  # a summary without groups (e.g. a classifier's scores over the whole test split)


def column_title(grid: Grid, mode: str) -> str:
    """The table title of a column (mode or variant): the grid's own, else the built-in one, else its name."""
    return grid.titles.get(mode) or MODE_TITLES.get(mode, mode)


def pretraining_title(mode: str) -> str:
    """The name of a pretraining run's mode in the probe table and curves: the built-in one, never the grid's column
    title (which names a downstream arm, e.g. "SimSiam + fine-tuning", not the pretraining run itself)."""
    return MODE_TITLES.get(mode, mode)


def group_values(summary: Mapping, metric: str) -> dict[str, float]:
    """``{"SITE/SEQUENCE": mean}`` of one metric from an evaluation summary (``mri_ssl.metrics.report``)."""
    groups = summary.get(GROUPING) or {OVERALL_GROUP: summary.get("overall", {})}
    values = {}
    for name, stats in groups.items():
        mean = (stats.get(metric) or {}).get("mean")
        if mean is not None and math.isfinite(mean):
            values[name] = float(mean)
    return values


def row_title(group: str) -> str:
    if group == OVERALL_GROUP:
        return "all test cases"
    site, _, sequence = group.partition("/")
    return f"{site} [{sequence}]" if sequence else site


def domain_of(group: str, in_domain: Mapping[str, Sequence[str]]) -> str:
    """In domain when the group's site and sequence are each among the listed ones (an absent key allows any)."""
    site, _, sequence = group.partition("/")
    fields = {"site": site, "sequence": sequence}
    ok = all(str(fields.get(key, "")) in [str(v) for v in allowed] for key, allowed in in_domain.items())
    return IN_DOMAIN if ok else OUT_OF_DOMAIN


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def collect(grid: Grid, results: Sequence[RunResult]) -> list[dict]:
    """One record per task, metric, group, fraction and mode: the per-seed values and their mean / std."""
    records = []
    for spec in grid.downstream:
        task_results = [r for r in results if r.run.kind == "downstream" and r.run.task == spec.name]
        for metric in spec.metrics:
            per_cell: dict[tuple[str, float, str], dict[int, float]] = {}
            attempted: dict[tuple[float, str], int] = {}
            for result in task_results:
                key = (result.run.fraction, result.run.mode)
                attempted[key] = attempted.get(key, 0) + 1
                if result.status != STATUS_OK or not result.summary:
                    continue
                for group, value in group_values(result.summary, metric).items():
                    per_cell.setdefault((group, *key), {})[result.run.seed] = value
            groups = sorted({group for group, _, _ in per_cell})
            for group in groups:
                for fraction in grid.label_fractions:
                    for mode in grid.columns_for(spec.name):
                        by_seed = per_cell.get((group, fraction, mode), {})
                        values = [by_seed[s] for s in sorted(by_seed)]
                        mean, std = mean_std(values) if values else (float("nan"), float("nan"))
                        records.append({
                            "task": spec.name, "metric": metric, "direction": spec.metrics[metric],
                            "domain": domain_of(group, spec.in_domain), "group": group, "fraction": fraction,
                            "mode": mode, "n_seeds": len(values), "n_runs": attempted.get((fraction, mode), 0),
                            "mean": mean, "std": std, "seeds": sorted(by_seed), "values": values})
    return records


def _format_cell(record: Mapping, places: int) -> str:
    if record["n_seeds"] == 0:
        return "failed" if record["n_runs"] else "n/a"
    text = f"{record['mean']:.{places}f} ± {record['std']:.{places}f}"
    if record["n_seeds"] < record["n_runs"]:
        text += f" (n={record['n_seeds']})"
    return text


def _places(metric: str) -> int:
    return 3 if metric.startswith(("dice", "mean_auc", "auc_", "accuracy", "probe_", "roc_auc", "f1")) else 2


def _ranks(records: Sequence[Mapping]) -> dict[int, int]:
    """Rank (0 best, 1 second) of each record among those with a value, by the metric's direction."""
    scored = [(i, r["mean"]) for i, r in enumerate(records) if r["n_seeds"] > 0 and math.isfinite(r["mean"])]
    if len(scored) < 2:
        return {}
    reverse = records[0]["direction"] == "higher"
    ordered = sorted(scored, key=lambda item: item[1], reverse=reverse)
    return {index: rank for rank, (index, _) in enumerate(ordered[:2])}


def markdown_table(records: Sequence[Mapping], grid: Grid, spec: StageSpec, metric: str) -> str:
    """The paper-layout Markdown table of one task and metric."""
    mine = [r for r in records if r["task"] == spec.name and r["metric"] == metric]
    if not mine:
        return f"### {spec.name}: {metric}\n\nNo finished runs.\n"
    direction = "higher" if spec.metrics[metric] == "higher" else "lower"
    lines = [f"### {spec.name}: {metric} ({direction} is better; mean ± std over seeds {list(grid.seeds)})", ""]
    columns = grid.columns_for(spec.name)
    header = [""] + [f"{fraction:.0%} labels<br>{column_title(grid, mode)}"
                     for fraction in grid.label_fractions for mode in columns]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    index = {(r["group"], r["fraction"], r["mode"]): r for r in mine}
    for domain in (IN_DOMAIN, OUT_OF_DOMAIN):
        groups = sorted({r["group"] for r in mine if r["domain"] == domain})
        if not groups:
            continue
        if spec.in_domain:  # without a rule every group is "in domain": no heading to say so
            lines.append("| **" + domain.capitalize() + "** |" + " |" * (len(header) - 1))
        for group in groups:
            cells = []
            for fraction in grid.label_fractions:
                block = [index[(group, fraction, mode)] for mode in columns]
                ranks = _ranks(block)
                for position, record in enumerate(block):
                    text = _format_cell(record, _places(metric))
                    rank = ranks.get(position)
                    cells.append(f"**{text}**" if rank == 0 else f"<u>{text}</u>" if rank == 1 else text)
            lines.append("| " + " | ".join([row_title(group)] + cells) + " |")
    return "\n".join(lines) + "\n"


def format_plain_tables(records: Sequence[Mapping], grid: Grid) -> str:
    """The results as fixed-width text for a terminal: per task, metric and label fraction (largest first), a row per
    group, a column per method, mean +/- std over seeds."""
    blocks = []
    for spec, metric, fraction in [(spec, metric, fraction) for spec in grid.downstream for metric in spec.metrics
                                   for fraction in sorted(grid.label_fractions, reverse=True)]:
        mine = {(r["group"], r["mode"]): r for r in records
                if r["task"] == spec.name and r["metric"] == metric and r["fraction"] == fraction}
        if not mine:
            continue
        groups = sorted({group for group, _ in mine}, key=lambda g: (domain_of(g, spec.in_domain) != IN_DOMAIN, g))
        width = max(len(row_title(g)) + 2 for g in groups) + len(" (in domain)")
        header = f"{spec.name}: {metric} ({spec.metrics[metric]} is better), {fraction:.0%} of labels, " \
                 f"seeds {list(grid.seeds)}"
        columns = grid.columns_for(spec.name)
        widths = [max(20, len(column_title(grid, m)) + 2) for m in columns]
        titles = "".join(f"{column_title(grid, m):>{w}}" for m, w in zip(columns, widths))
        lines = [header, f"{'':<{width}}" + titles]
        for group in groups:
            marked = spec.in_domain and domain_of(group, spec.in_domain) == IN_DOMAIN  # no rule: no domains to tell
            title = row_title(group) + (" (in domain)" if marked else "")
            cells = [_format_cell(mine[(group, mode)], _places(metric)) if (group, mode) in mine else "n/a"
                     for mode in columns]
            lines.append(f"{title:<{width}}" + "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths)))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# The representation probe of the pretraining runs: per mode, the untrained encoder (step 0), the end of training and
# a random-init encoder of the same shape, on held-out data. Two kinds, told apart by their keys: the 3-D bundle's
# cross-sequence retrieval (``mri_ssl.metrics.representation_probe``, ``features_top1``...) and the 2-D bundles'
# linear probe on frozen features (``mri_ssl.metrics.classification_probe``, ``auc``...).
RETRIEVAL_PROBE_COLUMNS = (("features_top1", "top-1 features"), ("projection_top1", "top-1 projections"),
                           ("features_top5", "top-5 features"), ("ntxent", "held-out NT-Xent"), ("spread", "spread"))
VIDEO_TEXT_PROBE_COLUMNS = (("RSUM", "RSUM"), ("t2v_R@5", "text-to-video R@5"), ("v2t_R@5", "video-to-text R@5"),
                            ("clip_loss", "held-out CLIP loss"), ("spread", "spread"))
CLASSIFICATION_PROBE_COLUMNS = (("auc", "linear-probe macro AUC"), ("accuracy", "linear-probe accuracy"),
                                # the fundus bundle's lesion-patch probe beside it (``mri_ssl.metrics.ProbeSet``)
                                ("lesion_auc", "lesion-patch AUC"), ("lesion_accuracy", "lesion-patch accuracy"),
                                ("spread", "projection spread"))
PROBE_STAGES = (("step 0", lambda probe: probe["history"][0]), ("end", lambda probe: probe["history"][-1]),
                ("random init", lambda probe: probe["random_init"]))


def probe_kind(first: Mapping) -> str:
    """The kind of probe a history entry comes from: ``"video_text"`` (``mri_ssl.metrics.RetrievalProbe``),
    ``"retrieval"`` (the 3-D cross-sequence retrieval probe) or ``"classification"`` (a 2-D linear probe)."""
    return "video_text" if "RSUM" in first else "retrieval" if "features_top1" in first else "classification"


PROBE_COLUMNS_BY_KIND = {"video_text": VIDEO_TEXT_PROBE_COLUMNS, "retrieval": RETRIEVAL_PROBE_COLUMNS,
                         "classification": CLASSIFICATION_PROBE_COLUMNS}


def probe_columns(first: Mapping) -> tuple[tuple[str, str], ...]:
    """The table columns of a probe, from its first history entry (``probe_kind``; the columns it has a value of)."""
    return tuple((key, title) for key, title in PROBE_COLUMNS_BY_KIND[probe_kind(first)] if key in first)


def probe_heading(first: Mapping) -> tuple[str, str]:
    """The probe table's heading and its closing note, worded for the probe's kind."""
    kind = probe_kind(first)
    if kind == "video_text":
        return (f"### Representation probe (video-text retrieval among the N = {first['n']} validation studies and "
                f"reports: chance RSUM {first['rsum_chance']:.0f}, CLIP loss chance ln N = "
                f"{first['clip_loss_chance']:.3f})",
                "'step 0' is the model before training, 'end' the last probe of the run, 'random init' a never-trained "
                "network of the same shape (seed + 999); the probe never sees the test split.")
    if kind == "retrieval":
        groups = int(first.get("groups", 1))  # disjoint probe sets of N crops, each figure averaged over them
        among = f"N = {first['n']}" + (f" per group, mean of {groups} disjoint groups" if groups > 1 else "")
        return (f"### Representation probe (held-out crops, {among}: chance top-1 {first['top1_chance']:.3f}, "
                f"NT-Xent chance ln(2N-1) = {first['ntxent_chance']:.3f}, healthy spread "
                f"{first['spread_healthy']:.3f})",
                "Top-1 / top-5: the other view of a crop (another sequence) is the nearest (among the 5 nearest) of "
                "the N candidates; 'end' is the last probe of the run, 'random init' a freshly initialised encoder "
                "of the same shape. The standard error of one top-1 is about sqrt(p (1 - p) / 2NK) over the 2NK "
                f"queries of K = {groups} group(s).")
    lesion = ""
    if "lesion_auc" in first:
        lesion = (f"; the lesion-patch probe the same way on {first.get('lesion_n_fit', '?')} training and "
                  f"{first.get('lesion_n', '?')} validation crops of {first.get('lesion_crop_size', '?')} px centred "
                  f"on a lesion or free of lesions, majority-class accuracy "
                  f"{first.get('lesion_majority_rate', float('nan')):.3f}")
    return (f"### Representation probe (label-free pretraining; a logistic regression on the frozen features, fitted "
            f"on {first.get('n_fit', '?')} training images and scored on {first.get('n', '?')} validation images: "
            f"chance AUC 0.5, majority-class accuracy {first.get('majority_rate', float('nan')):.3f}, healthy spread "
            f"{first.get('spread_healthy', float('nan')):.3f}{lesion})",
            "'step 0' is the encoder before pretraining, 'end' the last probe of the run, 'random init' a freshly "
            "initialised encoder of the same shape; the probe never sees the test split.")


def probes_by_seed(results: Sequence[RunResult]) -> dict[str, dict[int, dict]]:
    """``{mode: {seed: probe history of that seed's pretraining run}}`` for the finished runs that wrote one."""
    probes: dict[str, dict[int, dict]] = {}
    for result in results:
        probe = result.probe or {}
        if result.run.kind == "pretrain" and result.status == STATUS_OK and probe.get("history"):
            probes.setdefault(result.run.mode, {})[result.run.seed] = probe
    return probes


def probe_histories(results: Sequence[RunResult]) -> dict[str, list[dict]]:
    """``{mode: [probe history of each seed's pretraining run]}`` for the finished runs that wrote one."""
    return {mode: list(by_seed.values()) for mode, by_seed in probes_by_seed(results).items()}


def paired_probe_text(results: Sequence[RunResult], grid: Grid, key: str, title: str) -> str:
    """Each mode against the table's first mode (Base in the 3-D grids) on the probe's ``key`` at the end of training,
    paired by seed: the mean difference, its standard error over the seeds both ran, and in how many it is ahead.

    Runs of one seed start from the same encoder weights and are probed on the same crops, so the per-seed difference
    cancels what the seed does to both; its spread over seeds is the test of "mode A beats mode B". '' with fewer than
    two modes or no seed in common.
    """
    by_mode = probes_by_seed(results)
    modes = [mode for mode in grid.modes if mode in by_mode]
    if len(modes) < 2:
        return ""
    reference = modes[0]
    parts = []
    for mode in modes[1:]:
        seeds = sorted(set(by_mode[mode]) & set(by_mode[reference]))
        if not seeds:
            continue
        differences = [by_mode[mode][seed]["history"][-1][key] - by_mode[reference][seed]["history"][-1][key]
                       for seed in seeds]
        mean, std = mean_std(differences)
        ahead = sum(difference > 0 for difference in differences)
        spread = (f" ± {std / math.sqrt(len(seeds)):.3f} (standard error over {len(seeds)} seeds)" if len(seeds) > 1
                  else " (one seed: no standard error)")
        parts.append(f"{pretraining_title(mode)} - {pretraining_title(reference)} {mean:+.3f}{spread}, ahead in "
                     f"{ahead} of {len(seeds)}")
    if not parts:
        return ""
    return f"Paired by seed (same initial weights, same probe crops), {title} at the end: " + "; ".join(parts) + "."


def _mean_std_text(values: Sequence[float], places: int = 3) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{places}f} ± {std:.{places}f}" if len(values) > 1 else f"{mean:.{places}f}"


def probe_markdown(results: Sequence[RunResult], grid: Grid) -> str:
    """The probe table (markdown): a row per mode and stage, mean +/- std over seeds. When finished pretraining runs
    wrote no probe history, a line naming the file they lack; '' when no pretraining run finished."""
    histories = probe_histories(results)
    if not histories:
        finished = [r for r in results if r.run.kind == "pretrain" and r.status == STATUS_OK]
        if not finished:
            return ""
        return (f"### Representation probe\n\nNo probe table: the pretraining runs wrote no readable probe history "
                f"(`logs/{finished[0].run.spec.probe}` is missing in {len(finished)} of {len(finished)} finished "
                f"runs, e.g. {finished[0].folder / 'logs' / finished[0].run.spec.probe}).\n")
    first = next(iter(histories.values()))[0]["history"][0]
    columns = probe_columns(first)
    heading, note = probe_heading(first)
    lines = [heading, "", "| mode | encoder | seeds | " + " | ".join(title for _, title in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for mode in [m for m in grid.modes if m in histories]:
        probes = histories[mode]
        for stage, pick in PROBE_STAGES:
            cells = [_mean_std_text([pick(probe)[key] for probe in probes]) for key, _ in columns]
            lines.append(f"| {pretraining_title(mode)} | {stage} | {len(probes)} | " + " | ".join(cells) + " |")
    lines += ["", note]
    paired = paired_probe_text(results, grid, *columns[0])
    if paired:
        lines += ["", paired]
    return "\n".join(lines) + "\n"


def results_csv_text(records: Sequence[Mapping]) -> str:
    columns = ["task", "metric", "direction", "domain", "group", "fraction", "mode", "n_seeds", "n_runs", "mean",
               "std", "seeds", "values"]
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = dict(record)
        row["mean"] = "" if math.isnan(record["mean"]) else repr(record["mean"])
        row["std"] = "" if math.isnan(record["std"]) else repr(record["std"])
        row["seeds"] = " ".join(str(s) for s in record["seeds"])
        row["values"] = " ".join(repr(v) for v in record["values"])
        writer.writerow(row)
    return stream.getvalue()


def failures_markdown(results: Sequence[RunResult]) -> str:
    bad = [r for r in results if r.status != STATUS_OK]
    if not bad:
        return ""
    lines = ["### Runs that did not finish", "", "| run | status | reason |", "|---|---|---|"]
    for result in bad:
        reason = result.reason
        lines.append(f"| {result.run.label} | {result.status} | {reason.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_tables(grid: Grid, results: Sequence[RunResult], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.csv`` and ``results.md`` (every task and metric, then the failed runs); return the paths."""
    out_dir = Path(out_dir)
    records = collect(grid, results)
    sections = [f"# Experiment `{grid.name}`", ""]
    missing = [r.run.label for r in results if r.status != STATUS_OK]
    if missing:
        sections += [f"**Incomplete: {len(missing)} of {len(results)} runs did not finish** ({', '.join(missing)}); "
                     "their cells say `failed` or `n/a`, and the means cover only the seeds that finished. See "
                     "*Runs that did not finish* below.", ""]
    for spec in grid.downstream:
        for metric in spec.metrics:
            sections.append(markdown_table(records, grid, spec, metric))
    probe = probe_markdown(results, grid)
    if probe:
        sections.append(probe)
    failures = failures_markdown(results)
    if failures:
        sections.append(failures)
    finished = sum(r.status == STATUS_OK for r in results)
    sections.append(f"{finished} of {len(results)} runs finished ({sum(r.cached for r in results)} reused from "
                    f"earlier runs). Regenerate with `mri-ssl experiment {grid.path.name}`.\n")
    paths = {"csv": out_dir / "results.csv", "markdown": out_dir / "results.md"}
    atomic_write_text(paths["csv"], results_csv_text(records))
    atomic_write_text(paths["markdown"], "\n".join(sections))
    return paths
