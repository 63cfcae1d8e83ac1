"""Compare results that reach the same numbers by different code paths (batch sizes, thread counts, CPU types):
equal structure and text, numbers within a tolerance (float rounding differs in the last digits between paths)."""

import csv
import math
from pathlib import Path

REL, ABS = 1e-5, 1e-6


def _as_number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def assert_close_tree(actual, expected, rel: float = REL, abs_: float = ABS, where: str = "") -> None:
    """``actual`` equals ``expected`` through nested dicts and lists, numbers (and numeric strings, as CSV cells
    hold them) within ``rel`` / ``abs_``; NaN matches NaN."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys {actual} != {expected}"
        for key in expected:
            assert_close_tree(actual[key], expected[key], rel, abs_, f"{where}.{key}")
        return
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: {actual} != {expected}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_close_tree(a, e, rel, abs_, f"{where}[{index}]")
        return
    a, e = _as_number(actual), _as_number(expected)
    if a is None or e is None:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
    elif math.isnan(e):
        assert math.isnan(a), f"{where}: {a} is not NaN"
    else:
        assert math.isclose(a, e, rel_tol=rel, abs_tol=abs_), f"{where}: {a} != {e} (rel {rel}, abs {abs_})"


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
