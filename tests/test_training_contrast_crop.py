"""Simulating the training crop only (``RandTrainingContrastd(crop=...)``, issue 18): the same image as simulating
the whole volume and cropping it, exactly for the voxel-wise signal and the bias field, closely for Gibbs ringing."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    GibbsNoise,
    RandBiasField,
    RandCropByLabelClassesd,
    RandSpatialCropd,
    RandSpatialCropSamplesd,
)

from mri_ssl.errors import InputError
from mri_ssl.networks import FrozenEncoderUNet
from mri_ssl.transforms import RandTrainingContrastd
from mri_ssl.transforms.training_contrast import bias_coefficient_count, bias_field, crop_start

SHAPE = (21, 23, 19)  # odd sizes: MONAI's k-space centre (n - 1) / 2 is then the zero frequency itself
MAP_KEYS = ("pd", "r1", "r2s", "mt")


def phantom_maps(shape=SHAPE, seed=0) -> dict:
    """Nested boxes of three tissues with physical PD, R1, R2* (1/s) and MT, plus a little texture, channel-first;
    the affine is a 2 mm grid with an origin, so that a crop's position must be read through it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.zeros(shape, dtype=torch.long)
    labels[3:-3, 3:-3, 3:-3] = 1
    labels[6:-6, 7:-7, 6:-6] = 2
    labels[9:12, 10:13, 8:11] = 3
    values = {"pd": (0.0, 0.8, 0.7, 1.0), "r1": (0.0, 0.8, 1.3, 0.25), "r2s": (0.0, 15.0, 25.0, 2.0),
              "mt": (0.0, 0.01, 0.03, 0.0)}
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-20.0, 11.0, 4.0])
    item = {}
    for name, v in values.items():
        texture = 1.0 + 0.05 * torch.rand(shape, generator=generator) * (labels > 0)
        item[name] = MetaTensor((torch.tensor(v, dtype=torch.float32)[labels] * texture)[None], affine=affine)
    item["label"] = MetaTensor(labels[None].to(torch.uint8), affine=affine)
    return item


def contrast(crop=None, seed=7, **kwargs) -> RandTrainingContrastd:
    settings = {"bias_field_prob": 0.0, "gibbs_prob": 0.0, "rician_prob": 0.0, **kwargs}
    transform = RandTrainingContrastd(map_keys=MAP_KEYS, crop=crop, **settings)
    transform.set_random_state(seed)
    return transform


def box(item) -> tuple:
    start = crop_start(phantom_maps()["label"].affine, item["image"].affine)
    return tuple(slice(s, s + n) for s, n in zip(start, item["image"].shape[1:]))


@pytest.mark.parametrize("seed", range(4))  # four draws: several sequences and crop positions
def test_crop_then_simulate_equals_simulate_then_crop_for_the_voxelwise_signal(seed):
    crop = RandSpatialCropd(keys=["image", "label"], roi_size=(8, 10, 8), random_size=False)
    # The sequence and protocol are the first draw of both; stride 1: the volume's exact statistics.
    cropped = contrast(crop, seed=seed, statistics_stride=1)(phantom_maps())
    full = contrast(seed=seed)(phantom_maps())
    assert cropped["image"].meta["sequence"] == full["image"].meta["sequence"]  # the same draw in both
    assert cropped["image"].shape == (1, 8, 10, 8) and set(cropped) == {"image", "label"}
    region = box(cropped)
    torch.testing.assert_close(cropped["image"].as_tensor(), full["image"].as_tensor()[(slice(None),) + region],
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(cropped["label"].as_tensor(), phantom_maps()["label"].as_tensor()[(slice(None),) + region])
    # The crop keeps its place in space: its affine is the volume's moved to the crop's first voxel.
    assert torch.allclose(cropped["image"].affine, cropped["label"].affine)


def test_the_bias_field_is_the_whole_volumes_field_evaluated_at_the_crop():
    monai_field = RandBiasField(degree=3, coeff_range=(-0.3, 0.3), prob=1.0)
    monai_field.set_random_state(3)
    monai_field.randomize(img_size=SHAPE)
    coefficients = monai_field._coeff
    assert len(coefficients) == bias_coefficient_count(3, 3) == 20
    expected = np.exp(monai_field._generate_random_field(SHAPE, 3, coefficients))
    whole = bias_field(coefficients, 3, SHAPE, (0, 0, 0), SHAPE)
    np.testing.assert_allclose(whole.numpy(), expected, rtol=1e-5)
    part = bias_field(coefficients, 3, SHAPE, (4, 2, 7), (8, 9, 5))
    np.testing.assert_allclose(part.numpy(), expected[4:12, 2:11, 7:12], rtol=1e-5)
    coarse = bias_field(coefficients, 3, SHAPE, (1, 1, 1), (5, 6, 5), step=4)
    np.testing.assert_allclose(coarse.numpy(), expected[1::4, 1::4, 1::4], rtol=1e-5)


def head_phantom(shape=(39, 45, 37)) -> torch.Tensor:
    """A smooth-edged head: a bright ellipsoidal brain in a darker shell, with a ventricle, in an empty field."""
    grids = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64) for n in shape], indexing="ij")
    radius = torch.sqrt(sum(g ** 2 for g in grids))
    ventricle = torch.sqrt((grids[0] / 0.15) ** 2 + (grids[1] / 0.3) ** 2 + (grids[2] / 0.15) ** 2)
    return 0.4 * (radius < 0.85) + 0.6 * (radius < 0.7) - 0.7 * (ventricle < 1)


def test_gibbs_ringing_of_the_crop_matches_the_whole_volumes():
    image = RandTrainingContrastd(map_keys=MAP_KEYS)
    signal = head_phantom()
    shape = tuple(signal.shape)
    alpha = 0.5
    whole = GibbsNoise(alpha=alpha)(signal[None])[0]
    # The volume itself: the same truncation as MONAI's GibbsNoise.
    torch.testing.assert_close(image._gibbs(signal, alpha, shape), whole.to(signal.dtype), rtol=0, atol=1e-6)
    # A crop with a margin: ringing of the same amplitude inside the crop (the same cut-off), though not the same
    # pattern (edges beyond the margin do not ring into it); nearer the whole volume's with the margin than without.
    start, size = (8, 10, 8), (16, 16, 16)
    inner = tuple(slice(s, s + n) for s, n in zip(start, size))
    ringing = (whole - signal)[inner]
    errors, amplitudes = {}, {}
    for margin in (0, 8):
        region = signal[tuple(slice(s - margin, s + n + margin) for s, n in zip(start, size))]
        crop = image._gibbs(region, alpha, shape)[(slice(margin, margin + size[0]),) * 3]
        errors[margin] = float((crop - whole[inner]).norm() / ringing.norm())
        amplitudes[margin] = float((crop - signal[inner]).norm() / ringing.norm())
    assert errors[8] < errors[0]
    assert 0.75 < amplitudes[8] < 1.25, amplitudes


def test_crop_with_every_corruption_keeps_the_volume_scale_and_is_reproducible():
    crop = RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=(8, 8, 8),
                                   num_classes=4, num_samples=1)
    settings = {"bias_field_prob": 1.0, "gibbs_prob": 1.0, "rician_prob": 1.0, "statistics_stride": 2,
                "gibbs_margin_voxels": 4}
    first = contrast(crop, **settings)(phantom_maps())
    again = contrast(crop, **settings)(phantom_maps())
    assert torch.equal(first["image"], again["image"])  # one seed decides the crop and every corruption
    assert first["image"].shape == (1, 8, 8, 8) and first["image"].dtype == torch.float32
    assert torch.isfinite(first["image"]).all()
    assert abs(float(first["image"].mean())) < 5  # z-scored with the volume's statistics (not the crop's own)


def test_crop_arguments_are_checked():
    with pytest.raises(InputError, match="gibbs_margin_voxels"):
        RandTrainingContrastd(gibbs_margin_voxels=-1)
    with pytest.raises(InputError, match="statistics_stride"):
        RandTrainingContrastd(statistics_stride=0)
    with pytest.raises(InputError, match="crop"):
        RandTrainingContrastd(crop="RandSpatialCropd")
    two = RandSpatialCropSamplesd(keys=["image", "label"], roi_size=(8, 8, 8), num_samples=2, random_size=False)
    with pytest.raises(InputError, match="one crop per item"):
        contrast(two)(phantom_maps())


def test_frozen_unet_runs_channels_last_with_the_same_output():
    """The 3-D network keeps its weights channels-last (a speed-up on CPU); its output is the contiguous one's."""
    torch.manual_seed(0)
    network = FrozenEncoderUNet(encoder_config={"features": (4, 8, 8), "dropout": 0.0},
                                decoder_features=(8, 8, 4, 4), dropout=0.0, out_channels=3).eval()
    convolutions = [m.weight for m in network.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convolutions)
    image = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        output = network(image)
        network.channels_last = False
        reference = network.to(memory_format=torch.contiguous_format)(image)
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5)
