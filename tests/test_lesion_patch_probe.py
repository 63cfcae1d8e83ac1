"""The lesion-patch probe (``LesionPatchProbe``) and the probe set that runs it beside the whole-image probe."""

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from bundle_runner import bundle_dir
from mri_ssl.data.photo.fundus import probe_selection_name
from mri_ssl.engines import AtomicCheckpointer, load_checkpoint
from mri_ssl.errors import InputError
from mri_ssl.experiments.tables import CLASSIFICATION_PROBE_COLUMNS, probe_columns
from mri_ssl.metrics import ClassificationProbe, LesionPatchProbe, ProbeSet
from mri_ssl.metrics.lesion_patch_probe import crop_corner, lesion_centres, lesion_patches
from mri_ssl.metrics.probe_set import prefixed, unprefixed

SIDE, CROP, LESION = 32, 8, 3  # image side, crop side, lesion side (pixels)


def fundus_like(n: int, seed: int) -> list[dict]:
    """Items like the fundus probe's: ``(3, SIDE, SIDE)`` images of a dim random background (channel 0 below 0.5),
    every other one abnormal with 2-3 bright square lesions (channel 0 = 1) and the lesion mask; normal ones have an
    empty mask."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(n):
        image = 0.5 * rng.random((3, SIDE, SIDE)).astype(np.float32)
        mask = np.zeros((1, SIDE, SIDE), dtype=np.uint8)
        abnormal = index % 2
        if abnormal:
            for _ in range(int(rng.integers(2, 4))):
                top, left = (int(v) for v in rng.integers(2, SIDE - LESION - 2, size=2))
                mask[0, top:top + LESION, left:left + LESION] = 1
            image[0][mask[0] > 0] = 1.0
        items.append({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "label": abnormal})
    return items


class LesionReader(torch.nn.Module):
    """Features: whether the input contains a lesion pixel (channel 0 above 0.75), in closed form, when ``noise`` is
    0; random numbers independent of the input when ``noise`` is 1."""

    def __init__(self, noise: float = 0.0):
        super().__init__()
        self.noise = torch.nn.Parameter(torch.tensor(float(noise)), requires_grad=False)
        self.head = torch.nn.Linear(2, 4)  # gives the random-init copy something to reset

    def forward(self, x):
        lesion = (x[:, 0].flatten(1).amax(1) > 0.75).float()
        features = torch.stack([lesion, 1.0 - lesion], dim=1)
        if float(self.noise) != 0:
            generator = torch.Generator().manual_seed(int(1e4 * float(x.sum())) % 2 ** 31)
            features = torch.randn(features.shape, generator=generator)
        return {"features": features, "projection": self.head(features)}


def test_lesion_centres_are_the_centroids_of_the_components_big_enough():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:5, 3:6] = True      # 3 x 3: centroid (3, 4)
    mask[10:12, 10:16] = True  # 2 x 6: centroid (10.5, 12.5), rounded half to even: (10, 12)
    mask[18, 18] = True        # a speck of 1 pixel
    mask[5, 6] = True          # touches the first square diagonally: 8-connected, one component with it (3.2, 4.2)
    assert lesion_centres(mask, min_pixels=4) == [(3, 4), (10, 12)]
    assert len(lesion_centres(mask, min_pixels=1)) == 3
    assert lesion_centres(np.zeros((5, 5))) == []
    with pytest.raises(InputError, match="mask"):
        lesion_centres(np.zeros((2, 5, 5)))


def test_crop_windows_are_centred_and_shifted_inside_the_image():
    assert crop_corner((16, 16), 8, (32, 32)) == (12, 12)
    assert crop_corner((1, 30), 8, (32, 32)) == (0, 24)


def test_lesion_crops_hold_their_lesion_and_lesion_free_crops_overlap_none():
    items = fundus_like(12, seed=0)
    images = [item["image"] for item in items]
    masks = [item["mask"] for item in items]
    crops, labels, sources = lesion_patches(images, masks, CROP, lesion_free_per_image=3, seed=5, min_lesion_pixels=1)
    lesions = sum(len(lesion_centres(m[0].numpy(), 1)) for m in masks)
    assert crops.shape[1:] == (3, CROP, CROP) and int((labels == 1).sum()) == lesions
    assert set(sources[labels == 0]) == set(range(12))  # normal and abnormal images both give lesion-free crops
    for crop, label in zip(crops, labels):
        # lesion pixels are the only ones with channel 0 = 1: a lesion crop contains one, a lesion-free crop none
        assert bool((crop[0] == 1.0).any()) == bool(label)
    again = lesion_patches(images, masks, CROP, lesion_free_per_image=3, seed=5, min_lesion_pixels=1)
    assert torch.equal(crops, again[0]) and np.array_equal(labels, again[1]) and np.array_equal(sources, again[2])


def test_images_without_a_mask_count_as_lesion_free_only_when_normal():
    items = fundus_like(6, seed=1)
    images = [item["image"] for item in items]
    masks = [item["mask"] for item in items[:4]] + [None, None]  # image 4 normal, image 5 abnormal: masks unknown
    _, labels, sources = lesion_patches(images, masks, CROP, seed=0, labels=[0, 1, 0, 1, 0, 1])
    assert 5 not in set(sources) and 4 in set(sources[labels == 0]) and 1 in set(sources[labels == 1])
    _, _, without_labels = lesion_patches(images, masks, CROP, seed=0)
    assert {4, 5}.isdisjoint(without_labels)
    with pytest.raises(InputError, match="crop_size"):
        lesion_patches(images, masks, SIDE + 1)
    with pytest.raises(InputError, match="masks"):
        lesion_patches(images, masks[:2], CROP)


def test_the_probe_scores_one_for_features_that_encode_a_lesion_and_chance_for_noise():
    fit, held_out = fundus_like(24, seed=2), fundus_like(40, seed=3)
    probe = LesionPatchProbe(fit, held_out, crop_size=CROP)
    network = LesionReader()
    perfect = probe.measure(network)
    assert perfect["auc"] == pytest.approx(1.0) and perfect["accuracy"] == pytest.approx(1.0)
    assert perfect["crop_size"] == CROP and perfect["n"] > 60 and perfect["n_fit"] > 30
    noise = probe.measure(LesionReader(noise=1.0))
    assert noise["auc"] == pytest.approx(0.5, abs=0.15)
    assert probe.measure(network) == perfect  # the crops are fixed: the same network scores the same


def test_a_probe_set_merges_the_probes_and_scores_on_the_selected_one(tmp_path):
    fit, held_out = fundus_like(24, seed=2), fundus_like(24, seed=3)
    whole = ClassificationProbe(fit, held_out, ["normal", "abnormal"])
    lesion = LesionPatchProbe(fit, held_out, crop_size=CROP)
    network = LesionReader()
    merged = ProbeSet({"": whole, "lesion": lesion}, select="lesion").measure(network)
    assert merged["score"] == merged["lesion_auc"] == pytest.approx(1.0)
    assert merged["n"] == 24 and merged["lesion_n"] > 24 and "lesion_crop_size" in merged
    assert ProbeSet({"": whole, "lesion": lesion}, select="").measure(network)["score"] == merged["auc"]
    assert unprefixed("lesion", merged) == {**lesion.measure(network)}
    assert prefixed("", {"a": 1}) == {"a": 1} and prefixed("x", {"a": 1}) == {"x_a": 1}
    with pytest.raises(InputError, match="select"):
        ProbeSet({"": whole}, select="lesion")

    # In a trainer: the lesion features are lost in epoch 2 only, so best.pt (chosen on the lesion probe) is epoch 1
    # or 3 and holds noise == 0; the history has both probes' keys.
    def step(engine, batch):
        network.noise.fill_(1.0 if engine.state.epoch == 2 else 0.0)
        return {"loss": torch.tensor(1.0)}

    engine = Engine(step)
    engine.network = network
    engine.state.device = torch.device("cpu")
    probes = ProbeSet({"": whole, "lesion": lesion}, select="lesion", history_path=tmp_path / "probe.json")
    probes.attach(engine)
    AtomicCheckpointer(tmp_path / "models", network, metric_name="probe_score", mode="max").attach(engine)
    scores = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: scores.append(e.state.metrics["probe_score"]))
    engine.run([0], max_epochs=3)
    history = json.loads((tmp_path / "probe.json").read_text())
    assert [h["score"] for h in history["history"][1:]] == scores
    assert all(h["score"] == h["lesion_auc"] for h in history["history"])
    assert {"auc", "lesion_auc"} <= set(history["random_init"])
    best = load_checkpoint(tmp_path / "models" / "best.pt")
    assert float(best["network"]["noise"]) == 0.0 and scores[1] < 0.8
    # The table shows the lesion-patch columns when the history has them, and not otherwise.
    assert ("lesion_auc", "lesion-patch AUC") in probe_columns(history["history"][0])
    whole_only = {key: 0.5 for key, _ in CLASSIFICATION_PROBE_COLUMNS if not key.startswith("lesion")}
    assert [key for key, _ in probe_columns(whole_only)] == ["auc", "accuracy", "spread"]


def test_the_probe_selection_of_the_bundle():
    assert probe_selection_name("auto", True) == "lesion" and probe_selection_name("auto", False) == ""
    assert probe_selection_name("whole_image", True) == "" and probe_selection_name("lesion_patches", True) == "lesion"
    with pytest.raises(InputError, match="probe_selection"):
        probe_selection_name("lesion_patches", False)
    with pytest.raises(InputError, match="probe_selection"):
        probe_selection_name("best", True)


@pytest.mark.parametrize("selection, chosen", [("auto", "lesion"), ("whole_image", "")])
def test_the_fundus_pretraining_config_runs_both_probes_and_chooses_as_told(tmp_path, selection, chosen):
    folder = bundle_dir("fundus_camcontrast") / "configs"
    parser = ConfigParser()
    parser.read_config([str(folder / "pretrain.json"), str(folder / "cpu_demo.json")])
    parser.update({"bundle_root": str(tmp_path), "demo_images": 12, "demo_validation_images": 4,
                   "demo_test_images": 2, "demo_size": 64, "image_size": 64, "progress_bar": False,
                   "probe_selection": selection})
    handler = parser.get_parsed_content("probe#handler")
    assert isinstance(handler, ProbeSet) and list(handler.probes) == ["", "lesion"] and handler.select == chosen
    assert handler.probes["lesion"].crop_size == 32  # pretrain.json's crop_size: half the image
    (fit_crops, fit_labels), (crops, labels) = handler.probes["lesion"].build_sets()
    assert crops.shape[1:] == (3, 32, 32) and set(labels) == {0, 1} and set(fit_labels) == {0, 1}
