"""SimulateSequence(d) and RandSimulateSequence(d): MONAI conventions, metadata, reproducibility."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from mri_ssl.errors import InputError, ProtocolError
from mri_ssl.io.nifti import save_nifti
from mri_ssl.physics import TYPICAL_PROTOCOLS, simulate
from mri_ssl.transforms import RandSimulateSequence, RandSimulateSequenced, SimulateSequence, SimulateSequenced

AFFINE = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))


@pytest.fixture()
def stacked_maps():
    generator = torch.Generator().manual_seed(0)
    shape = (7, 8, 9)
    maps = torch.stack([
        0.5 + 0.5 * torch.rand(shape, generator=generator),
        0.3 + 2.0 * torch.rand(shape, generator=generator),
        5.0 + 25.0 * torch.rand(shape, generator=generator),
        0.03 * torch.rand(shape, generator=generator),
    ])
    return MetaTensor(maps, affine=AFFINE)


def as_named(stacked):
    return {name: stacked[i].as_tensor() for i, name in enumerate(("pd", "r1", "r2s", "mt"))}


def test_fixed_protocol_matches_simulate_and_keeps_affine(stacked_maps):
    image = SimulateSequence("flair")(stacked_maps)
    assert isinstance(image, MetaTensor) and image.shape == (1, 7, 8, 9)
    expected = simulate(as_named(stacked_maps), "flair", TYPICAL_PROTOCOLS["flair"])
    torch.testing.assert_close(image[0].as_tensor(), expected)
    torch.testing.assert_close(image.affine, AFFINE)
    assert image.meta["sequence"] == "flair"
    assert image.meta["protocol"] == pytest.approx(TYPICAL_PROTOCOLS["flair"])


def test_batched_protocol_gives_one_channel_per_protocol(stacked_maps):
    protocol = {"tr": torch.tensor([0.02, 0.5, 3.0]), "te": torch.tensor([0.003, 0.01, 0.02]),
                "flip_angle": torch.tensor([0.2, 0.3, 0.4])}
    image = SimulateSequence("gre", protocol)(stacked_maps)
    assert image.shape == (3, 7, 8, 9)
    assert len(image.meta["protocol"]) == 3 and image.meta["protocol"][1]["tr"] == pytest.approx(0.5)


def test_bad_protocol_fails_at_construction():
    with pytest.raises(ProtocolError, match="te"):
        SimulateSequence("fse", {"tr": 0.01, "te": 0.05})
    with pytest.raises(ProtocolError, match="unknown sequence"):
        SimulateSequence("dwi")
    with pytest.raises(InputError, match="r1 is required"):
        SimulateSequence("fse", map_names=("pd", "r2s"))


def test_wrong_channel_count_names_the_problem(stacked_maps):
    with pytest.raises(InputError, match="expected 4 channels"):
        SimulateSequence("fse")(stacked_maps[:3])


def test_random_transform_is_reproducible_and_varies(stacked_maps):
    transform = RandSimulateSequence()
    transform.set_random_state(seed=7)
    first = [transform(stacked_maps) for _ in range(6)]
    transform.set_random_state(seed=7)
    second = [transform(stacked_maps) for _ in range(6)]
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)
        assert a.meta["protocol"] == b.meta["protocol"]
    assert len({image.meta["sequence"] for image in first}) > 1
    # The recorded protocol reproduces the image exactly.
    for image in first:
        expected = simulate(as_named(stacked_maps), image.meta["sequence"], image.meta["protocol"])
        torch.testing.assert_close(image[0].as_tensor(), expected)


def test_random_transform_respects_sequence_choice(stacked_maps):
    transform = RandSimulateSequence(sequences=("fse", "mprage"), sequence_probs=(0.0, 1.0))
    transform.set_random_state(seed=0)
    assert {transform(stacked_maps).meta["sequence"] for _ in range(5)} == {"mprage"}
    with pytest.raises(InputError, match="sequence_probs"):
        RandSimulateSequence(sequences=("fse", "gre"), sequence_probs=(0.5, 0.6))


def test_dictionary_wrappers_read_maps_from_disk_like_real_data(tmp_path, stacked_maps):
    files = {}
    for i, name in enumerate(("pd", "r1", "r2s", "mt")):
        files[name] = str(save_nifti(stacked_maps[i].as_tensor(), AFFINE.numpy(), tmp_path / f"{name}.nii.gz"))
    keys = ("pd", "r1", "r2s", "mt")
    pipeline = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                        SimulateSequenced(keys, sequence="mprage")])
    image = pipeline(files)["image"]
    assert image.shape == (1, 7, 8, 9) and image.meta["sequence"] == "mprage"
    np.testing.assert_allclose(image.affine.numpy(), AFFINE.numpy())
    expected = simulate(as_named(stacked_maps), "mprage", TYPICAL_PROTOCOLS["mprage"])
    torch.testing.assert_close(image[0].as_tensor(), expected, rtol=1e-5, atol=1e-7)

    random_pipeline = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                               RandSimulateSequenced(keys, output_key="sim")])
    random_pipeline.set_random_state(seed=3)
    a = random_pipeline(files)["sim"]
    random_pipeline.set_random_state(seed=3)
    b = random_pipeline(files)["sim"]
    torch.testing.assert_close(a, b)
    assert a.meta["protocol"] == b.meta["protocol"]


def test_optional_maps_may_be_absent(stacked_maps):
    data = {"pd": stacked_maps[0:1], "r1": stacked_maps[1:2], "r2s": stacked_maps[2:3]}
    out = SimulateSequenced(("pd", "r1", "r2s", "mt"), sequence="gre")(data)
    named = as_named(stacked_maps)
    del named["mt"]
    torch.testing.assert_close(out["image"][0].as_tensor(), simulate(named, "gre", TYPICAL_PROTOCOLS["gre"]))
