"""AddGaussianNoised: the noise is the stored target, its statistics, per-case seeding, validation."""

import math

import pytest
import torch
from monai.data import MetaTensor

from mri_ssl.errors import InputError
from mri_ssl.transforms import AddGaussianNoised
from mri_ssl.transforms.noise import case_seed, denoised_in_input_units


def image(name="/data/sub-01_T1w.nii.gz", shape=(1, 32, 32, 32)):
    return MetaTensor(torch.linspace(-2, 2, math.prod(shape)).reshape(shape), meta={"filename_or_obj": name})


def test_noisy_image_is_clean_plus_stored_noise_with_sigma():
    transform = AddGaussianNoised("image", sigma=0.2, noise_key="label", clean_key="clean")
    transform.set_random_state(0)
    clean = image()
    out = transform({"image": clean})
    torch.testing.assert_close(out["image"] - out["label"], clean.as_tensor(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["clean"].as_tensor(), clean.as_tensor())
    assert abs(float(out["label"].std()) - 0.2) < 0.005  # 32768 samples: std error of the std ~ 0.0008
    assert abs(float(out["label"].mean())) < 0.005


def test_training_noise_differs_between_calls_but_follows_the_random_state():
    first = AddGaussianNoised("image", sigma=0.2)
    first.set_random_state(7)
    a, b = first({"image": image()})["label"], first({"image": image()})["label"]
    assert not torch.equal(a, b)
    again = AddGaussianNoised("image", sigma=0.2)
    again.set_random_state(7)
    assert torch.equal(again({"image": image()})["label"], a)


def test_per_case_seed_depends_only_on_the_file_name_and_seed():
    transform = AddGaussianNoised("image", sigma=0.2, per_case_seed=0)
    a1 = transform({"image": image("a.nii.gz")})["label"]
    transform({"image": image("b.nii.gz")})  # order and other cases do not matter
    a2 = transform({"image": image("a.nii.gz")})["label"]
    b = transform({"image": image("b.nii.gz")})["label"]
    assert torch.equal(a1, a2) and not torch.equal(a1, b)
    other_seed = AddGaussianNoised("image", sigma=0.2, per_case_seed=1)({"image": image("a.nii.gz")})["label"]
    assert not torch.equal(a1, other_seed)
    assert case_seed(0, "a.nii.gz") == case_seed(0, "a.nii.gz") != case_seed(0, "b.nii.gz")


def test_bad_arguments_are_named():
    for sigma in (0, -0.1, float("nan"), "0.2"):
        with pytest.raises(InputError, match="sigma"):
            AddGaussianNoised("image", sigma=sigma)
    with pytest.raises(InputError, match="file name"):
        AddGaussianNoised("image", per_case_seed=0)({"image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(InputError, match="floating"):
        AddGaussianNoised("image")({"image": torch.zeros(1, 4, 4, 4, dtype=torch.int64)})


def test_denoised_in_input_units_undoes_the_zscore():
    original = torch.rand(1, 8, 8, 8) * 300 + 50
    z = (original - original.mean()) / original.std(unbiased=False)
    noise = 0.2 * torch.randn_like(z)
    # A perfect noise prediction gives back the original intensities.
    torch.testing.assert_close(denoised_in_input_units(z + noise, noise, original), original, rtol=1e-5, atol=1e-3)
