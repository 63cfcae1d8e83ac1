"""Subject-level splits and label fractions: seeded, order-independent, disjoint, nested."""

import random

import pytest

from mri_ssl.data.splits import (check_disjoint_subjects, select_label_fraction, split_counts,
                                 subject_level_split)
from mri_ssl.errors import InputError

THREE_WAY = {"training": 0.7, "validation": 0.1, "test": 0.2}
IXI_GST = {"training": 226 / 322, "validation": 31 / 322, "test": 65 / 322}


def subjects(n, prefix="sub-"):
    return [f"{prefix}{i:03d}" for i in range(n)]


def training_entries(n_subjects, images_per_subject=3):
    return [{"image": f"{subject}_{k}.nii.gz", "subject": subject}
            for subject in subjects(n_subjects) for k in range(images_per_subject)]


# ------------------------------------------------------------------------------------------------ subject_level_split


def test_split_is_deterministic_for_a_seed():
    assert subject_level_split(subjects(50), THREE_WAY, seed=3) == subject_level_split(subjects(50), THREE_WAY, seed=3)


def test_different_seeds_give_different_splits():
    assert subject_level_split(subjects(50), THREE_WAY, seed=0) != subject_level_split(subjects(50), THREE_WAY, seed=1)


def test_split_does_not_depend_on_input_order_or_repeats():
    names = subjects(40)
    shuffled = names * 3  # one subject per image: repeats
    random.Random(7).shuffle(shuffled)
    assert subject_level_split(shuffled, THREE_WAY, seed=5) == subject_level_split(names, THREE_WAY, seed=5)


def test_every_subject_is_in_exactly_one_split():
    names = subjects(37)
    splits = subject_level_split(names, THREE_WAY, seed=2)
    placed = [subject for members in splits.values() for subject in members]
    assert sorted(placed) == sorted(names)  # coverage, and no subject twice
    for members in splits.values():
        assert members == sorted(members)


def test_322_gst_subjects_split_226_31_65():
    splits = subject_level_split(subjects(322, "IXI"), IXI_GST, seed=0)
    counts = {name: len(members) for name, members in splits.items()}
    assert counts == {"training": 226, "validation": 31, "test": 65}


def test_counts_sum_to_n_by_largest_remainder():
    for n in range(0, 60):
        counts = split_counts(n, THREE_WAY)
        assert sum(counts.values()) == n
    assert split_counts(10, THREE_WAY) == {"training": 7, "validation": 1, "test": 2}
    assert split_counts(11, {"a": 0.5, "b": 0.5}) == {"a": 6, "b": 5}  # tie: the split listed first


def test_each_positive_split_gets_at_least_one_subject_when_possible():
    assert split_counts(3, THREE_WAY) == {"training": 1, "validation": 1, "test": 1}
    counts = split_counts(4, {"training": 0.9, "validation": 0.1, "unused": 0.0})
    assert counts == {"training": 3, "validation": 1, "unused": 0}
    # Fewer subjects than splits: no minimum, but the counts still sum to n.
    assert sum(split_counts(2, THREE_WAY).values()) == 2
    assert subject_level_split(["only"], THREE_WAY)["training"] == ["only"]


@pytest.mark.parametrize("fractions", [
    {"training": 0.8, "validation": 0.1},          # sums to 0.9
    {"training": 1.2, "validation": -0.2},         # negative
    {"training": float("nan"), "validation": 1.0},
    {"training": "a lot"},
    {},
])
def test_bad_fractions_are_rejected(fractions):
    with pytest.raises(InputError) as error:
        subject_level_split(subjects(10), fractions)
    assert error.value.source == "fractions"


def test_fractions_summing_to_one_within_rounding_are_accepted():
    splits = subject_level_split(subjects(10), {"a": 0.1 + 1e-7, "b": 0.9})
    assert len(splits["a"]) + len(splits["b"]) == 10


# ------------------------------------------------------------------------------------------------ label fractions


def chosen_subjects(entries):
    return {entry["subject"] for entry in entries}


def test_one_percent_of_226_subjects_is_two_subjects():
    entries = training_entries(226, images_per_subject=1)
    assert len(chosen_subjects(select_label_fraction(entries, 0.01, seed=0))) == 2
    assert len(chosen_subjects(select_label_fraction(entries, 0.10, seed=0))) == 23


def test_tiny_fraction_keeps_at_least_one_subject():
    assert len(chosen_subjects(select_label_fraction(training_entries(5), 0.01))) == 1


def test_label_fraction_subsets_are_nested():
    entries = training_entries(226, images_per_subject=2)
    for seed in (0, 1, 2):
        one = chosen_subjects(select_label_fraction(entries, 0.01, seed=seed))
        ten = chosen_subjects(select_label_fraction(entries, 0.1, seed=seed))
        half = chosen_subjects(select_label_fraction(entries, 0.5, seed=seed))
        assert one < ten < half


def test_label_fraction_is_seeded_and_order_independent():
    entries = training_entries(50)
    reversed_entries = list(reversed(entries))
    a = chosen_subjects(select_label_fraction(entries, 0.2, seed=4))
    assert a == chosen_subjects(select_label_fraction(reversed_entries, 0.2, seed=4))
    assert a != chosen_subjects(select_label_fraction(entries, 0.2, seed=5))


def test_all_entries_of_a_chosen_subject_are_kept_in_order():
    entries = training_entries(20, images_per_subject=3)
    selected = select_label_fraction(entries, 0.25, seed=1)
    chosen = chosen_subjects(selected)
    assert len(chosen) == 5
    assert selected == [entry for entry in entries if entry["subject"] in chosen]


def test_full_fraction_returns_entries_unchanged():
    entries = list(reversed(training_entries(7)))
    assert select_label_fraction(entries, 1.0) == entries
    no_subjects = [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}]
    assert select_label_fraction(no_subjects, 1.0) == no_subjects  # any datalist trains at 100 % of the labels


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1, float("nan"), "half"])
def test_fraction_outside_zero_one_is_rejected(fraction):
    with pytest.raises(InputError) as error:
        select_label_fraction(training_entries(10), fraction)
    assert error.value.source == "label_fraction"


def test_entry_without_subject_is_rejected_naming_its_index():
    entries = training_entries(4, images_per_subject=1)
    entries[2] = {"image": "orphan.nii.gz"}
    with pytest.raises(InputError, match="entry 2"):
        select_label_fraction(entries, 0.5)


# ------------------------------------------------------------------------------------------------ disjointness


def test_check_disjoint_subjects_names_the_subject_and_both_splits():
    datalist = {
        "training": [{"subject": "sub-1"}, {"subject": "sub-2"}, {"subject": "sub-2"}],
        "validation": [{"subject": "sub-3"}],
        "test": [{"subject": "sub-4"}, {"subject": "sub-2"}],
    }
    with pytest.raises(InputError) as error:
        check_disjoint_subjects(datalist)
    message = str(error.value)
    assert "sub-2" in message and "'training'" in message and "'test'" in message


def test_check_disjoint_subjects_accepts_disjoint_splits_and_missing_ones():
    check_disjoint_subjects({"training": [{"subject": "a"}, {"subject": "a"}], "validation": [{"subject": "b"}]})
    check_disjoint_subjects({"training": [{"id": "a"}], "test": [{"id": "b"}]}, subject_key="id")
    with pytest.raises(InputError, match="validation entry 0"):
        check_disjoint_subjects({"validation": [{"image": "x.nii.gz"}]})
