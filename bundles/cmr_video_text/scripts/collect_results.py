"""Summarise evaluate.json outputs (logs/<run>/metrics.json) over seeds: mean and sample std per setting.

Usage: ``python scripts/collect_results.py LOGS_DIR`` prints Markdown tables (retrieval, then linear probe) with one
row per setting (run name without ``_seed<k>``) and a ``zero-shot (untrained)`` row per setting, then the training
runs' validation retrieval probe (``logs/<run>/probe.json``, written by training even without evaluate.json): the
never-trained reference, step 0, the best epoch (what ``best.pt`` holds) and the last epoch.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from mri_ssl.metrics.representation_probe import probe_milestones

RETRIEVAL = ("t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_MdR", "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_MdR", "RSUM")
PROBE = ("accuracy", "macro_auc", "macro_f1")


def collect(logs: Path, table: str, columns) -> str:
    groups = defaultdict(list)
    for path in sorted(logs.glob("*/metrics.json")):
        setting = re.sub(r"_seed\d+$", "", path.parent.name)
        for row in json.loads(path.read_text())[table]:
            name = setting if row["model"] != "zero-shot (untrained)" else f"{setting} zero-shot (untrained)"
            groups[name].append(row)
    return mean_std_table(groups, columns, lambda column: 2 if column == "accuracy" or "macro" in column else 1)


def mean_std_table(groups: dict[str, list[dict]], columns, digits_of) -> str:
    """A Markdown table: a row per setting, each column's mean ± sample std over the setting's runs (seeds), with
    ``digits_of(column)`` decimals."""
    lines = ["| setting | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, rows in sorted(groups.items()):
        cells = []
        for column in columns:
            values = np.array([r[column] for r in rows], dtype=float)
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            digits = digits_of(column)
            cells.append(f"{values.mean():.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PROBE_COLUMNS = ("epochs", "reference RSUM", "step-0 RSUM", "best epoch", "best RSUM", "best / reference",
                 "best CLIP loss", "last RSUM", "last CLIP loss", "last train loss", "chance CLIP loss")


def probe_row(path: Path) -> dict[str, float]:
    """One run's probe figures (``probe.json``): the reference, step 0, the best and the last epoch."""
    milestones = probe_milestones(json.loads(path.read_text()))
    if milestones is None:
        raise ValueError(f"{path} holds no probe history")
    reference, start, best, last = (milestones[k] for k in ("untrained_reference", "start", "best", "end"))
    return {"epochs": last["epoch"], "reference RSUM": reference["RSUM"], "step-0 RSUM": start["RSUM"],
            "best epoch": best["epoch"], "best RSUM": best["RSUM"],
            "best / reference": best["RSUM"] / reference["RSUM"],
            "best CLIP loss": best["clip_loss"], "last RSUM": last["RSUM"], "last CLIP loss": last["clip_loss"],
            "last train loss": last.get("train_loss", float("nan")), "chance CLIP loss": start["clip_loss_chance"]}


def collect_probe(logs: Path) -> str:
    groups = defaultdict(list)
    for path in sorted(logs.glob("*/probe.json")):
        groups[re.sub(r"_seed\d+$", "", path.parent.name)].append(probe_row(path))
    return mean_std_table(groups, PROBE_COLUMNS, lambda column: 3 if "loss" in column else 2 if "/" in column else 1)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "logs")
    print(collect(folder, "retrieval", RETRIEVAL))
    print()
    print(collect(folder, "linear_probe", PROBE))
    print()
    print(collect_probe(folder))
