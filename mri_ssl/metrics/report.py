"""Evaluation reports: a per-case CSV, a summary JSON and a Markdown table, broken down by site and sequence.

A report is built from rows, one per case: identifying string columns (``case``, ``subject``, ``site``,
``sequence``, ...), numeric metric columns (``dice_gm``, ``hd95_mm_mean``, ``psnr_db``, ...; NaN or inf allowed) and
``status_<class>`` columns from ``segmentation_case_scores``.

Summary statistics of a metric in a group of cases are over its finite values only: ``n`` counts them and
``n_excluded`` counts the rest (NaN, e.g. a structure absent from both label and prediction, or +inf, the PSNR of an
output identical to its reference, or a row without that column), so ``n + n_excluded`` is the group's case count.
``std`` is the sample standard deviation (ddof=1), 0 for a single value; ``mean`` and ``std`` are null when ``n`` is 0.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text, save_json
from mri_ssl.metrics.segmentation import STATUS_ABSENT, STATUS_FALSE_POSITIVE, STATUS_MISSED

STATUS_PREFIX = "status_"
# Per-case counts of classes by status (from segmentation_case_scores); the table shows their totals.
COUNT_COLUMNS = ("missed", "false_positive")
UNSPECIFIED_GROUP = "(unspecified)"


def _is_metric_value(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def metric_columns(rows: Sequence[Mapping]) -> list[str]:
    """Columns whose every present value is a number, in order of first appearance (``None`` counts as missing)."""
    columns: dict[str, bool] = {}
    for row in rows:
        for column, value in row.items():
            numeric = value is None or _is_metric_value(value)
            columns[column] = columns.get(column, True) and numeric
    return [column for column, numeric in columns.items() if numeric]


def summarise_values(values: Iterable) -> dict:
    """``{"mean", "std", "n", "n_excluded"}`` over the finite values; None, NaN and +-inf are excluded."""
    values = [None if value is None else float(value) for value in values]
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else None,
        "std": (float(finite.std(ddof=1)) if n > 1 else 0.0) if n else None,
        "n": n,
        "n_excluded": len(values) - n,
    }


def summarise_rows(rows: Sequence[Mapping], metrics: Sequence[str]) -> dict:
    """``{metric: summarise_values(...)}`` for one group of rows; a row without a metric counts as excluded."""
    return {metric: summarise_values(row.get(metric) for row in rows) for metric in metrics}


def _group_name(row: Mapping, keys: Sequence[str]) -> str:
    return "/".join(str(row.get(key) or UNSPECIFIED_GROUP) for key in keys)


def group_rows(rows: Sequence[Mapping], keys: Sequence[str]) -> dict[str, list[Mapping]]:
    """Rows by the values of ``keys`` joined with "/" (e.g. ``"guys/t1"``), groups sorted by name."""
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(_group_name(row, keys), []).append(row)
    return dict(sorted(groups.items()))


def count_statuses(rows: Sequence[Mapping]) -> dict[str, int]:
    """How many (case, class) pairs were missed, false positives or absent, over all ``status_*`` columns."""
    counts = {STATUS_MISSED: 0, STATUS_FALSE_POSITIVE: 0, STATUS_ABSENT: 0}
    for row in rows:
        for column, value in row.items():
            if column.startswith(STATUS_PREFIX) and value in counts:
                counts[value] += 1
    return counts


def summarise_cases(rows: Sequence[Mapping], group_keys: Sequence[str] = ("site", "sequence")) -> dict:
    """The summary ``write_report`` writes as JSON (see the module for the statistics).

    Keys: ``n_cases``; ``group_keys``; ``overall``; ``by_<key>`` for each group key; when there are two or more keys,
    ``by_<key1>_<key2>...`` grouped by their combination, named like ``"SITE/SEQUENCE"``; ``counts`` of statuses.
    """
    if not rows:
        raise InputError("rows", "no cases were evaluated, so there is nothing to report; check that the datalist "
                                 "has test cases and that the evaluator ran")
    group_keys = tuple(group_keys)
    metrics = metric_columns(rows)
    summary: dict = {"n_cases": len(rows), "group_keys": list(group_keys), "overall": summarise_rows(rows, metrics)}
    groupings = [(key,) for key in group_keys] + ([group_keys] if len(group_keys) > 1 else [])
    for keys in groupings:
        summary["by_" + "_".join(keys)] = {
            name: summarise_rows(members, metrics) for name, members in group_rows(rows, keys).items()}
    summary["counts"] = count_statuses(rows)
    return summary


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if _is_metric_value(value):
        if isinstance(value, numbers.Integral):
            return str(int(value))
        value = float(value)
        return "" if math.isnan(value) else repr(value)  # repr: the shortest text that reads back to the same float
    return str(value)


def per_case_csv_text(rows: Sequence[Mapping]) -> str:
    """All rows and all columns (in order of first appearance) as CSV; NaN and missing values are empty cells."""
    columns = list(dict.fromkeys(column for row in rows for column in row))
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return stream.getvalue()


def _decimals(metric: str) -> int:
    if metric.startswith("dice"):
        return 3
    if "_mm" in metric or metric.endswith("_db") or "_db_" in metric:
        return 2
    return 4


def _table_cell(metric: str, stats: Mapping, group_size: int) -> str:
    if stats.get("mean") is None:
        return "n/a"
    if metric in COUNT_COLUMNS:
        # Whole-number counts per case: mean * n recovers their total exactly (up to rounding of the mean).
        return str(int(round(stats["mean"] * stats["n"])))
    if _decimals(metric) == 4:
        text = f"{stats['mean']:.4g} ± {stats['std']:.2g}"
    else:
        places = _decimals(metric)
        text = f"{stats['mean']:.{places}f} ± {stats['std']:.{places}f}"
    if stats["n"] < group_size:
        text += f" (n={stats['n']})"
    return text


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def format_summary_table(summary: Mapping) -> str:
    """The Markdown table of ``summary.md``: one row per group of all ``group_keys`` and an overall row.

    Cells are mean ± std (Dice 3 decimals, mm and dB 2); ``(n=k)`` marks a cell whose mean is over fewer than the
    group's cases (the rest were NaN, e.g. absent structures); ``missed`` / ``false_positive`` are totals.
    """
    group_keys = tuple(summary.get("group_keys", ()))
    overall = summary["overall"]
    metrics = list(overall)
    group_label = "/".join(group_keys) if group_keys else "group"
    lines = ["| " + " | ".join([_escape(group_label), "n"] + [_escape(m) for m in metrics]) + " |",
             "|" + "---|" * (len(metrics) + 2)]

    def table_row(name: str, stats_by_metric: Mapping) -> str:
        group_size = max((s["n"] + s["n_excluded"] for s in stats_by_metric.values()), default=0)
        cells = [_table_cell(metric, stats_by_metric[metric], group_size) for metric in metrics]
        return "| " + " | ".join([_escape(name), str(group_size)] + cells) + " |"

    groups = summary.get("by_" + "_".join(group_keys), {}) if group_keys else {}
    lines += [table_row(name, stats) for name, stats in groups.items()]
    lines.append(table_row("**overall**", overall))
    counts = summary.get("counts", {})
    if any(counts.values()):
        lines += ["", "Structures missed: {}, false positives: {}, absent from label and prediction (not scored): {}."
                  .format(counts.get(STATUS_MISSED, 0), counts.get(STATUS_FALSE_POSITIVE, 0),
                          counts.get(STATUS_ABSENT, 0))]
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], out_dir: str | os.PathLike, group_keys: Sequence[str] = ("site", "sequence"),
                 prefix: str = "") -> dict[str, Path]:
    """Write ``<prefix>per_case.csv``, ``<prefix>summary.json`` and ``<prefix>summary.md`` into ``out_dir``.

    Each file is written atomically, so a failed write leaves any earlier report in place. Returns the paths keyed
    ``"per_case"``, ``"summary_json"``, ``"summary_md"``. Raises ``InputError("rows", ...)`` when ``rows`` is empty.
    """
    summary = summarise_cases(rows, group_keys)
    out_dir = Path(out_dir)
    paths = {"per_case": out_dir / f"{prefix}per_case.csv", "summary_json": out_dir / f"{prefix}summary.json",
             "summary_md": out_dir / f"{prefix}summary.md"}
    atomic_write_text(paths["per_case"], per_case_csv_text(rows))
    save_json(summary, paths["summary_json"])
    atomic_write_text(paths["summary_md"], format_summary_table(summary))
    return paths
