"""What a user checks after the README's main command: every bundle run finished, the results table holds numbers,
and the figures it names are on disk. Exit status 1, with the reasons, otherwise.

Usage: python .ci/check_demo.py DEMO_OUT
"""

import csv
import json
import re
import sys
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def problems_of(out: Path) -> list[str]:
    problems = []
    runs_csv = out / "runs.csv"
    if not runs_csv.is_file():
        return [f"{runs_csv}: missing"]
    runs = list(csv.DictReader(runs_csv.open()))
    if not runs:
        problems.append(f"{runs_csv}: no runs")
    problems += [f"{runs_csv}: run {row['label']} is {row['status']}: {row['error']}" for row in runs
                 if row["status"] != "ok"]
    results = out / "results.md"
    text = results.read_text() if results.is_file() else ""
    if not text:
        problems.append(f"{results}: missing or empty")
    lines = text.splitlines()
    # Table body rows: not a header (the row above a |---| separator), not a section row (| **In domain** |).
    body = [line for index, line in enumerate(lines)
            if line.startswith("| ") and not line.startswith("| **")
            and not (index + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[index + 1]))]
    if not body:
        problems.append(f"{results}: no table rows")
    empty = [line for line in body if re.search(r"\|\s*(failed|n/a)?\s*\|", line)]
    problems += [f"{results}: a row with an empty cell: {line}" for line in empty]
    without = [line for line in body if not re.search(r"\d+\.\d+", line)]  # metric and probe tables alike
    problems += [f"{results}: a table row without a number: {line}" for line in without]
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    experiment = summary.get("experiment") or {}
    figures = experiment.get("figures", []) + ([summary["montage"]] if "montage" in summary else [])
    if not figures:
        problems.append(f"{out / 'summary.json'}: names no figures")
    for figure in figures:
        path = out / figure
        if not path.is_file() or path.read_bytes()[:8] != PNG_SIGNATURE:
            problems.append(f"{path}: missing or not a PNG")
    print(f"CI: demo output {out}: {len(runs)} runs, {len(body)} table rows, {len(figures)} figures; "
          f"wall {summary.get('seconds', '?')} s, peak memory {summary.get('peak_memory_gb', '?')} GB")
    return problems


if __name__ == "__main__":
    found = problems_of(Path(sys.argv[1]))
    for problem in found:
        print(f"CI: {problem}", file=sys.stderr)
    sys.exit(1 if found else 0)
