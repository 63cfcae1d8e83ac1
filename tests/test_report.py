"""write_report: grouping by site and sequence, NaN exclusion and status counts, CSV round trip, Markdown, atomicity."""

import csv
import json
import math

import numpy as np
import pytest

from mri_ssl.errors import InputError
from mri_ssl.metrics import format_summary_table, write_report


def case(name, site, sequence, dice_gm, hd95_gm, status_lesion="ok", dice_lesion=0.5, psnr=30.0):
    return {"case": name, "subject": f"sub-{name}", "site": site, "sequence": sequence,
            "dice_gm": dice_gm, "hd95_mm_gm": hd95_gm, "status_gm": "ok",
            "dice_lesion": dice_lesion, "status_lesion": status_lesion, "psnr_db": psnr,
            "missed": int(status_lesion == "missed")}


@pytest.fixture
def rows():
    return [
        case("01", "guys", "t1", 0.90, 2.0),
        case("02", "guys", "t1", 0.80, 4.0, status_lesion="absent", dice_lesion=float("nan")),
        case("03", "guys", "t2", 0.70, 6.0, status_lesion="missed", dice_lesion=0.0),
        case("04", "hh", "t1", 0.60, 8.0, status_lesion="absent", dice_lesion=float("nan"), psnr=math.inf),
    ]


def test_summary_groups_by_site_sequence_and_both(tmp_path, rows):
    summary = json.loads(write_report(rows, tmp_path)["summary_json"].read_text())
    assert summary["n_cases"] == 4
    assert set(summary["by_site"]) == {"guys", "hh"}
    assert set(summary["by_sequence"]) == {"t1", "t2"}
    assert set(summary["by_site_sequence"]) == {"guys/t1", "guys/t2", "hh/t1"}
    guys_t1 = summary["by_site_sequence"]["guys/t1"]["dice_gm"]
    assert guys_t1["mean"] == pytest.approx(0.85)
    assert guys_t1["std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert summary["by_site"]["hh"]["dice_gm"] == {"mean": 0.6, "std": 0.0, "n": 1, "n_excluded": 0}
    overall = summary["overall"]["hd95_mm_gm"]
    assert overall["mean"] == pytest.approx(5.0) and overall["n"] == 4
    assert not any(column.startswith("status_") or column in ("case", "site") for column in summary["overall"])


def test_nan_and_inf_are_excluded_and_statuses_counted(tmp_path, rows):
    summary = json.loads(write_report(rows, tmp_path)["summary_json"].read_text())
    lesion = summary["overall"]["dice_lesion"]
    assert (lesion["n"], lesion["n_excluded"]) == (2, 2)
    assert lesion["mean"] == pytest.approx(0.25)
    assert summary["by_site"]["hh"]["dice_lesion"] == {"mean": None, "std": None, "n": 0, "n_excluded": 1}
    psnr = summary["overall"]["psnr_db"]
    assert (psnr["mean"], psnr["n"], psnr["n_excluded"]) == (30.0, 3, 1)
    assert summary["counts"] == {"missed": 1, "false_positive": 0, "absent": 2}


def test_per_case_csv_round_trips(tmp_path, rows):
    path = write_report(rows, tmp_path)["per_case"]
    with open(path, newline="") as stream:
        read = list(csv.DictReader(stream))
    assert len(read) == len(rows)
    assert list(read[0]) == list(rows[0])
    for written, original in zip(read, rows):
        for column, value in original.items():
            if isinstance(value, float) and math.isnan(value):
                assert written[column] == ""
            elif isinstance(value, (int, float)):
                assert float(written[column]) == value
            else:
                assert written[column] == value


def test_markdown_lists_each_group_and_the_overall_row(tmp_path, rows):
    paths = write_report(rows, tmp_path, prefix="test_")
    assert {path.name for path in paths.values()} == {"test_per_case.csv", "test_summary.json", "test_summary.md"}
    markdown = paths["summary_md"].read_text()
    summary = json.loads(paths["summary_json"].read_text())
    assert markdown == format_summary_table(summary)
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table_rows[0].split(" | ")[:3] == ["| site/sequence", "n", "dice_gm"]
    assert [line.split(" | ")[0] for line in table_rows[1:]] == ["| guys/t1", "| guys/t2", "| hh/t1", "| **overall**"]
    assert "0.850 ± 0.071" in table_rows[1]  # Dice: 3 decimals
    assert "5.00 ± 2.58" in table_rows[-1]  # HD95 in mm: 2 decimals
    assert "0.250 ± 0.354 (n=2)" in table_rows[-1]  # lesion Dice over the 2 cases where it was scored
    assert "n/a" in table_rows[3]  # hh/t1 has no scored lesion
    assert "Structures missed: 1" in markdown


def test_write_is_atomic_and_overwrites(tmp_path, rows):
    write_report(rows, tmp_path)
    write_report(rows[:2], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_case.csv", "summary.json", "summary.md"]
    assert json.loads((tmp_path / "summary.json").read_text())["n_cases"] == 2


def test_one_grouping_key_and_no_rows(tmp_path, rows):
    summary = json.loads(write_report(rows, tmp_path, group_keys=("site",))["summary_json"].read_text())
    assert set(summary) >= {"overall", "by_site"} and "by_sequence" not in summary
    assert "| hh |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(InputError, match="rows: no cases were evaluated"):
        write_report([], tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
