"""The pretraining recipe's guards: augmentation sizes follow the crop, train / validation / probe views are made by
separate objects, held-out demo subjects never share a seed with training subjects."""

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from mri_ssl.data.brain.demo import SPLITS, subject_seed
from mri_ssl.errors import InputError
from mri_ssl.transforms import ContrastiveViewPair

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mri_ssl_pretrain"


def erased_fraction(pair: ContrastiveViewPair, edge: int, draws: int = 150) -> float:
    pair.set_random_state(seed=0)
    return float(np.mean([float((pair.dropout(torch.ones(1, edge, edge, edge)) == 0).float().mean())
                          for _ in range(draws)]))


def test_dropout_erases_the_same_share_of_the_crop_at_any_crop_size():
    small, large = (erased_fraction(ContrastiveViewPair(crop_size=edge), edge) for edge in (32, 64))
    # The paper's holes (1-10 holes of 5-24 voxels at 96^3) erase about 5 % of the crop.
    assert 0.02 < small < 0.09 and 0.02 < large < 0.09
    assert small == pytest.approx(large, rel=0.3)
    # Absolute voxel sizes at a 32^3 crop erase several times more: the failure this scaling prevents.
    assert erased_fraction(ContrastiveViewPair(crop_size=32, size_reference_crop=None), 32) > 4 * small


def test_voxel_unit_sizes_scale_with_each_axis_of_the_crop():
    pair = ContrastiveViewPair(crop_size=(48, 96, 192), dropout_size=(4, 24))
    assert tuple(pair.dropout.spatial_size) == (2, 4, 8)
    assert tuple(pair.dropout.max_spatial_size) == (12, 24, 48)
    paper = ContrastiveViewPair(crop_size=96, elastic=True)
    half = ContrastiveViewPair(crop_size=48, elastic=True)
    assert half.spatial.sigma_range == pytest.approx(tuple(s / 2 for s in paper.spatial.sigma_range))
    assert half.spatial.magnitude_range == pytest.approx(tuple(m / 2 ** 2.5 for m in paper.spatial.magnitude_range))
    with pytest.raises(InputError, match="size_reference_crop"):
        ContrastiveViewPair(crop_size=32, size_reference_crop=0)


@pytest.mark.parametrize("configs", [["train.json"], ["train.json", "cpu_demo.json"]])
def test_train_validation_and_probe_use_separate_view_pair_objects(configs):
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in configs])
    parser.update({"bundle_root": str(BUNDLE)})
    pairs = [parser.get_parsed_content(key) for key in ("train#view_pair", "validate#view_pair", "probe#view_pair")]
    assert all(isinstance(pair, ContrastiveViewPair) for pair in pairs)
    assert len({id(pair) for pair in pairs}) == 3
    # The probe's views differ in sequence only: no spatial augmentation, no occlusion.
    probe = pairs[2]
    assert probe.mode == "seqinv" and probe.dropout.prob == 0.0 and probe.rotate_range_deg == 0.0
    assert parser.get_parsed_content("checkpointer#metric_name") == "probe_score"


def test_held_out_subjects_never_share_a_seed_with_training_subjects():
    seeds = {split: {subject_seed(seed, split, i) for seed in range(3) for i in range(500)} for split in SPLITS}
    assert not seeds["training"] & seeds["validation"]
    assert not seeds["training"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    with pytest.raises(InputError):
        subject_seed(0, "train", 0)


@pytest.mark.parametrize("configs, batch_norm, temperature", [
    (["train.json"], False, 0.5),                    # the paper's head and temperature
    (["train.json", "cpu_demo.json"], True, 0.1),    # the CPU recipe's, under which the loss leaves chance
])
def test_projector_batch_norm_and_temperature_are_the_recipes(configs, batch_norm, temperature):
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in configs])
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    projector = parser.get_parsed_content("network_def").projector
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in projector) is batch_norm
    assert parser.get_parsed_content("loss").temperature == pytest.approx(temperature)


def cpu_recipe(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / name) for name in ("train.json", "cpu_demo.json")])
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", **overrides})
    parser.get_parsed_content("imports")
    return parser


def test_a_one_crop_step_with_projector_batch_norm_stops_at_start_naming_batch_size(capsys):
    parser = cpu_recipe(batch_size=1)  # cpu_demo.json: 2 crops per volume, so 1 // 2 -> 1 volume of 2 crops: fine
    steps = parser.config["initialize"]
    check = next(i for i, step in enumerate(steps) if "check_batch_norm_batch" in step)
    parser.get_parsed_content(f"initialize#{check}")
    parser = cpu_recipe(batch_size=1, crops_per_volume=1)
    with pytest.raises(SystemExit) as stopped:
        parser.get_parsed_content(f"initialize#{check}")
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("InputError: batch_size: one training step holds 1 crop(s)")
    assert "set projection_batch_norm false" in line
    # Turned off from the command line (where the value arrives as text), the same step passes and the head has no
    # batch norm.
    parser = cpu_recipe(batch_size=1, crops_per_volume=1, projection_batch_norm="false")
    parser.get_parsed_content(f"initialize#{check}")
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in parser.get_parsed_content("network_def").projector)


def test_the_probes_random_init_encoder_differs_per_run_seed_and_its_crops_do_not():
    # A fixed random-init encoder would give the three-seed tables a random-init column without spread.
    seeds = {seed: cpu_recipe(seed=seed) for seed in (0, 2)}
    assert seeds[0].get_parsed_content("probe#handler#random_init_seed") == 999
    assert seeds[2].get_parsed_content("probe#handler#random_init_seed") == 1001
    assert {parser.get_parsed_content("probe#handler#seed") for parser in seeds.values()} == {54321}
