"""Deterministic subject-level splits and label-fraction subsets.

Every split here is made over *subjects*, never over images: the T1w and T2w scans of one person share anatomy, so
putting them in different splits would leak the test anatomy into training. Splits are seeded and independent of the
order in which subjects are listed (subjects are sorted before the seeded permutation), so a manifest written twice
from the same folder, on any machine, holds the same splits.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from mri_ssl.errors import InputError

# Fractions are typed by users (e.g. 0.7/0.1/0.2) or computed (226/322); their sum may miss 1 by rounding only.
FRACTION_SUM_TOLERANCE = 1e-6
DEFAULT_SPLITS = ("training", "validation", "test")


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Return ``fractions`` as a ``{split name: float}`` dict after checking them.

    Raises ``InputError("fractions", ...)`` when there are none, one is negative or not finite, or they do not sum
    to 1 (within ``FRACTION_SUM_TOLERANCE``).
    """
    if not fractions:
        raise InputError("fractions", "no splits given; expected e.g. {'training': 0.7, 'validation': 0.1, "
                                      "'test': 0.2}")
    checked = {}
    for name, value in fractions.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError("fractions", f"the fraction of split {name!r} is {value!r}, not a number") from None
        if not math.isfinite(value) or value < 0:
            raise InputError("fractions", f"the fraction of split {name!r} is {value}; fractions must be >= 0")
        checked[str(name)] = value
    total = sum(checked.values())
    if abs(total - 1.0) > FRACTION_SUM_TOLERANCE:
        raise InputError("fractions", f"fractions {checked} sum to {total:.6g}; they must sum to 1")
    return checked


def split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """How many of ``n`` subjects each split gets: largest-remainder rounding, so the counts sum to ``n``.

    Each split first gets ``floor(fraction * n)``; the subjects left over go one each to the splits with the largest
    remainders (ties: the split listed first). When ``n`` is at least the number of splits with a positive fraction,
    each such split gets at least one subject, taken from the largest split, so that a small dataset still has a
    validation and a test subject.
    """
    fractions = check_fractions(fractions)
    names = list(fractions)
    total = sum(fractions.values())  # 1 within the tolerance; dividing by it keeps the quotas summing to n
    # The epsilon keeps an exact quota such as 226/322 * 322 = 225.99999999999997 from being floored to 225.
    quotas = [fractions[name] / total * n for name in names]
    counts = [int(math.floor(quota + 1e-9)) for quota in quotas]
    remainders = [quota - count for quota, count in zip(quotas, counts)]
    by_remainder = sorted(range(len(names)), key=lambda i: (-remainders[i], i))
    for i in by_remainder[: max(0, n - sum(counts))]:
        counts[i] += 1
    positive = [i for i, name in enumerate(names) if fractions[name] > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(len(names)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return dict(zip(names, counts))


def subject_level_split(subjects: Sequence[str], fractions: Mapping[str, float], seed: int = 0
                        ) -> dict[str, list[str]]:
    """Assign each subject to exactly one split; return ``{split name: sorted subjects}``.

    Args:
        subjects: subject identifiers; repeats (one per image) are fine, each subject is placed once.
        fractions: split name to the fraction of subjects it gets (>= 0, summing to 1), e.g.
            ``{"training": 0.7, "validation": 0.1, "test": 0.2}``. Counts follow ``split_counts``.
        seed: seed of the permutation (``numpy.random.default_rng``). The result depends only on the set of subjects,
            the fractions and the seed, not on the order of ``subjects``.
    """
    counts = split_counts(len(set(subjects)), fractions)
    unique = sorted(set(subjects))
    order = np.random.default_rng(int(seed)).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    splits, start = {}, 0
    for name, count in counts.items():
        splits[name] = sorted(shuffled[start:start + count])
        start += count
    return splits


def select_label_fraction(entries: list[dict], fraction: float, seed: int = 0, subject_key: str = "subject"
                          ) -> list[dict]:
    """The training entries of a seeded subset of ``max(1, round(fraction * n_subjects))`` subjects.

    All entries of a chosen subject are kept together, in their original order. Subsets are nested: for one seed,
    the subjects are drawn from a single permutation of the sorted subjects and the subset is a prefix of it, so the
    1 % subset lies inside the 10 % subset, which lies inside 100 %. ``fraction == 1`` returns ``entries`` unchanged
    (and then entries need no ``subject_key``, so any datalist trains at full labels).

    Raises ``InputError("label_fraction", ...)`` unless ``0 < fraction <= 1``, and ``InputError`` naming the entry
    index when an entry lacks ``subject_key``.
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise InputError("label_fraction", f"{fraction!r} is not a number; expected a fraction in (0, 1]") from None
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise InputError("label_fraction", f"{fraction} is not in (0, 1]; e.g. 0.01 trains on 1 % of the subjects")
    if fraction == 1.0:
        return entries
    for index, entry in enumerate(entries):
        if subject_key not in entry:
            raise InputError(f"training entry {index}", f"has no {subject_key!r} key; label fractions are drawn per "
                                                        f"subject, so every entry must name its subject")
    subjects = sorted({entry[subject_key] for entry in entries}, key=str)
    if not subjects:
        raise InputError("training", "no training entries to draw a label fraction from")
    order = np.random.default_rng(int(seed)).permutation(len(subjects))
    n_chosen = max(1, round(fraction * len(subjects)))
    chosen = {subjects[i] for i in order[:n_chosen]}
    return [entry for entry in entries if entry[subject_key] in chosen]


def check_disjoint_subjects(datalist: Mapping, splits: Sequence[str] = DEFAULT_SPLITS,
                            subject_key: str = "subject") -> None:
    """Raise ``InputError`` naming the subject and both splits when a subject appears in two of ``splits``.

    Splits missing from ``datalist`` are skipped. An entry without ``subject_key`` is an error (naming the split and
    entry index), since its subject cannot be checked.
    """
    first_split: dict[str, str] = {}
    for split in splits:
        for index, entry in enumerate(datalist.get(split) or []):
            if subject_key not in entry:
                raise InputError(f"{split} entry {index}", f"has no {subject_key!r} key; cannot check that subjects "
                                                           f"are in one split only")
            subject = entry[subject_key]
            seen_in = first_split.setdefault(subject, split)
            if seen_in != split:
                raise InputError(f"subject {subject}", f"appears in both the {seen_in!r} and the {split!r} split; "
                                                       f"a subject must be in one split only, or its anatomy leaks "
                                                       f"from training into evaluation")
