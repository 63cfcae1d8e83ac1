"""What the mri_segmentation bundle's training pipeline feeds the loss: crops centred on every class alike, and label
maps that keep their integer class values through the crop and the affine augmentation (nearest interpolation)."""

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from bundle_runner import bundle_dir

PATCH = [16, 16, 16]
CROPS = 200


def training_config(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle_dir("mri_segmentation") / "configs" / "train.json")])
    for key, value in {"patch_size": PATCH, **overrides}.items():
        parser[key] = value
    return parser


def training_augmentation(seed: int = 0):
    augmentation = training_config().get_parsed_content("train#augmentation")
    augmentation.set_random_state(seed=seed)
    return augmentation


def synthetic_case():
    """A 64^3 label map: grey matter fills most of it, white matter a slab, CSF one 4^3 cube (0.02 % of voxels)."""
    label = np.zeros((1, 64, 64, 64), np.uint8)
    label[:, 4:60, 4:60, 4:60] = 1
    label[:, 10:30, 10:38, 10:38] = 2
    label[:, 40:44, 40:44, 40:44] = 3
    image = label.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, label.shape).astype(np.float32)
    affine = torch.eye(4)
    return {"image": MetaTensor(torch.from_numpy(image), affine=affine),
            "label": MetaTensor(torch.from_numpy(label), affine=affine)}


def crops(count: int = CROPS):
    augmentation, case = training_augmentation(), synthetic_case()
    for _ in range(count):
        out = augmentation(dict(case))
        yield out[0] if isinstance(out, list) else out


def test_training_crops_visit_a_rare_class_as_often_as_the_others():
    """A positive/negative sampler puts a crop over the 4^3 CSF cube in a few percent of draws (the share of the
    foreground within half a patch of it); class-balanced sampling centres a quarter of the crops on it."""
    with_csf = sum(bool((crop["label"] == 3).any()) for crop in crops())
    assert with_csf / CROPS > 0.15


def test_training_labels_keep_their_class_values():
    for crop in crops(40):
        values = set(torch.unique(torch.as_tensor(crop["label"])).tolist())
        assert values <= {0, 1, 2, 3}
        assert tuple(crop["label"].shape[1:]) == tuple(PATCH) == tuple(crop["image"].shape[1:])


@pytest.mark.parametrize("ratios", [[0, 0, 1, 0], [0, 0, 0, 1]])
def test_crop_class_ratios_choose_the_crop_centres(ratios):
    """``crop_class_ratios`` is handed to the sampler: all weight on one class puts every crop centre in it."""
    sampler = training_config(crop_class_ratios=ratios).get_parsed_content("train#crop")
    sampler.set_random_state(seed=0)
    wanted = ratios.index(1)
    for _ in range(20):
        crop = sampler(synthetic_case())[0]
        assert int(crop["label"][0, 8, 8, 8]) == wanted  # the centre voxel of an even-sized crop


def test_crop_centres_are_listed_once_in_the_cached_stage_and_choose_the_same_crops():
    """The cached preprocessing lists each class's voxels once (``ClassesToIndicesd``), so a training crop does not
    rescan the whole label map; without subsampling the crops are those the sampler would draw from the label map."""
    parser = training_config(crop_centres_per_class=None)
    cached_stage = parser.get_parsed_content("train#preprocessing").transforms[-2:]  # the pad and the listing
    key = "label" + parser.get_parsed_content("crop_indices_postfix")
    case = synthetic_case()
    listed = dict(case)
    for transform in cached_stage:
        listed = transform(listed)
    assert [len(indices) for indices in listed[key]] == [int((case["label"] == c).sum()) for c in range(4)]
    sampler = parser.get_parsed_content("train#crop")
    from_list, from_label = [], []
    for source, out in ((listed, from_list), (case, from_label)):
        sampler.set_random_state(seed=3)
        for _ in range(10):
            crop = sampler(dict(source))[0]
            assert key not in crop  # the list is consumed, never collated into a batch
            out.append(crop["label"])
    for a, b in zip(from_list, from_label):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_crop_centres_per_class_caps_the_cached_list():
    parser = training_config(crop_centres_per_class=1000)
    listing = parser.get_parsed_content("train#preprocessing").transforms[-1]
    listed = listing(synthetic_case())["label" + parser.get_parsed_content("crop_indices_postfix")]
    assert [len(indices) for indices in listed] == [1000, 1000, 1000, 64]  # CSF: its 4^3 cube, all of it
    label = synthetic_case()["label"].flatten()
    for c, indices in enumerate(listed):
        assert bool((label[torch.as_tensor(indices)] == c).all())
