"""The downstream bundles' training modes (issue 22): fixed or re-simulated training contrast, frozen or fine-tuned
encoder with its own learning rate, the zero-initialised denoiser head, and the grid / table columns they add."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from mri_ssl.data.brain.demo import BRAIN_DOWNSTREAM_DEMO
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.demo import load_demo_grid
from mri_ssl.engines.reports import DenoisingReport
from mri_ssl.errors import InputError
from mri_ssl.experiments import collect, expand_runs, load_grid
from mri_ssl.experiments.runner import STATUS_OK, RunResult
from mri_ssl.experiments.tables import MODE_TITLES, format_plain_tables, markdown_table
from mri_ssl.networks import FrozenEncoderUNet
from mri_ssl.transforms import RandTrainingContrastd
from mri_ssl.transforms.training_contrast import check_training_contrast, training_keys

REPO = Path(__file__).resolve().parents[1]
SLIM = {"encoder_config": {"features": (4, 8, 8), "dropout": 0.0}, "decoder_features": (8, 8, 4, 4), "dropout": 0.0}


def slim_unet(**kwargs) -> FrozenEncoderUNet:
    torch.manual_seed(0)
    return FrozenEncoderUNet(**{**SLIM, "out_channels": 2, **kwargs})


# ------------------------------------------------------------------------------------------ encoder: frozen or not


def test_parameter_groups_give_the_encoder_its_own_rate_and_cover_every_trainable_parameter_once():
    tuned = slim_unet(freeze_encoder=False)
    groups = tuned.parameter_groups(1e-3, 1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("decoder", 1e-3), ("encoder", 1e-4)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(1 for p in tuned.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in tuned.encoder.parameters()}
    assert [g["lr"] for g in tuned.parameter_groups(1e-3)] == [1e-3, 1e-3]  # no encoder rate: the decoder's

    frozen = slim_unet(freeze_encoder=True)
    groups = frozen.parameter_groups(1e-3, 1e-4)
    assert [g["name"] for g in groups] == ["decoder"]  # nothing of the frozen encoder reaches the optimizer
    assert not {id(p) for p in groups[0]["params"]} & {id(p) for p in frozen.encoder.parameters()}
    for bad in (0.0, -1e-3, float("nan"), "1e-3", True):
        with pytest.raises(InputError, match="encoder_learning_rate"):
            tuned.parameter_groups(1e-3, bad)


def test_head_learning_rate_puts_exactly_the_output_convolution_in_its_own_group():
    tuned = slim_unet(freeze_encoder=False)
    groups = tuned.parameter_groups(1e-3, 1e-4, head_learning_rate=1e-2)
    assert [(g["name"], g["lr"]) for g in groups] == [("decoder", 1e-3), ("head", 1e-2), ("encoder", 1e-4)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == sum(1 for p in tuned.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in tuned.head.parameters()}
    with pytest.raises(InputError, match="head_learning_rate"):
        tuned.parameter_groups(1e-3, None, head_learning_rate=0.0)
    # AdamW's first step moves every weight by about its group's rate: the head ten times as far as the decoder
    network = slim_unet(freeze_encoder=True)
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-3, head_learning_rate=1e-2), weight_decay=0.0)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    network(torch.randn(2, 1, 16, 16, 16)).square().mean().backward()
    optimizer.step()
    after = network.state_dict()
    assert (after["head.conv.bias"] - before["head.conv.bias"]).abs().max() == pytest.approx(1e-2, rel=1e-3)
    assert (after["refine.1.conv.bias"] - before["refine.1.conv.bias"]).abs().max() <= 1e-3 * 1.001


def test_dice_batch_pools_each_class_over_the_batch():
    """``dice_batch`` (mri_segmentation's switch; "true" as the command line passes it): the loss of two crops equals
    the loss of one volume made of both, so a class missing from one crop is scored over the batch, not as a 0-or-1
    term of that crop."""
    configs = REPO / "bundles" / "mri_segmentation" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "cpu_demo.json")])
    parser["device"] = "$torch.device('cpu')"
    parser["dice_batch"] = "true"
    loss = parser.get_parsed_content("loss")
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, 6)
    labels = torch.randint(0, 4, (2, 1, 6, 6, 6))
    labels[1][labels[1] == 3] = 0  # the second crop has no CSF
    joined = loss(torch.cat(list(logits), dim=1)[None], torch.cat(list(labels), dim=1)[None])
    assert float(loss(logits, labels)) == pytest.approx(float(joined), rel=1e-5)
    parser["dice_batch"] = False  # the paper's per-crop Dice differs
    per_crop = parser.get_parsed_content("loss", lazy=False)
    assert float(per_crop(logits, labels)) != pytest.approx(float(joined), rel=1e-3)


def test_image_skip_feeds_the_raw_image_to_the_full_resolution_block():
    torch.manual_seed(0)
    network = slim_unet(out_channels=3, image_skip=True)
    plain = slim_unet(out_channels=3)
    assert network.refine[0].conv.in_channels == plain.refine[0].conv.in_channels + 1
    image = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    network.eval()
    network(image)[0, :, 8, 8, 8].sum().backward()
    # with the encoder frozen (no gradient through it), the voxel's own intensity still reaches its logits
    assert image.grad[0, 0, 8, 8, 8] != 0
    assert network(torch.randn(2, 1, 16, 16, 8)).shape == (2, 3, 16, 16, 8)


@pytest.mark.parametrize("freeze", [True, False])
def test_one_step_moves_the_encoder_only_when_it_is_fine_tuned(freeze):
    network = slim_unet(freeze_encoder=freeze)
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-2, 1e-3))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    network.train()
    loss = torch.nn.functional.cross_entropy(network(torch.randn(2, 1, 16, 16, 16)),
                                             torch.randint(0, 2, (2, 16, 16, 16)))
    loss.backward()
    optimizer.step()
    after = network.state_dict()
    encoder_moved = any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    decoder_moved = any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    assert decoder_moved
    assert encoder_moved is (not freeze)
    # AdamW's first step moves every weight by about lr: the encoder's by its own, lower rate.
    if not freeze:
        for key in [k for k in before if k.startswith("encoder.") and before[k].ndim == 5]:  # conv kernels
            assert float((after[key] - before[key]).abs().max()) == pytest.approx(1e-3, rel=0.05), key


# ------------------------------------------------------------------------------------ the zero-initialised denoiser


def test_untrained_denoiser_is_the_identity_and_a_few_steps_gain_psnr(tmp_path):
    """The fault of issue 18's CI demo: a denoiser worse than its input (negative gain). With a random output layer the
    untrained network adds its own error, and a short schedule did not undo it; zero-initialised, step 0 is the
    identity denoiser (gain exactly 0) and training can only start from there."""
    sigma = 0.2
    generator = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.avg_pool3d(torch.randn(4, 1, 24, 24, 24, generator=generator), 5, 1, 2) * 5
    clean = clean[..., 4:20, 4:20, 4:20]  # smooth images (what a denoiser can tell from white noise)

    def gain_db(network, index=0):
        noise = sigma * torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(99))
        network.eval()
        with torch.no_grad():
            prediction = network(clean[index:index + 1] + noise)
        item = {"image": (clean[index] + noise[0]), "clean": clean[index]}
        return DenoisingReport(tmp_path).score(item, prediction[0])["psnr_gain_db"]

    random_head = slim_unet(out_channels=1, freeze_encoder=True)
    assert gain_db(random_head) < 0  # the mechanism of the fault: an untrained random head makes images worse
    network = slim_unet(out_channels=1, freeze_encoder=True, zero_init_head=True)
    assert gain_db(network) == pytest.approx(0.0, abs=1e-9)
    optimizer = torch.optim.AdamW(network.parameter_groups(3e-3))
    for step in range(40):
        noise = sigma * torch.randn(3, 1, 16, 16, 16, generator=generator)
        network.train()
        loss = torch.nn.functional.mse_loss(network(clean[1:] + noise), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert gain_db(network) > 0.3  # held-out image: it removes noise, it does not add any


def test_denoising_bundle_starts_from_the_identity_and_segmentation_does_not():
    def network(bundle):
        parser = ConfigParser()
        configs = REPO / "bundles" / bundle / "configs"
        parser.read_config([str(configs / name) for name in ("train.json", "cpu_demo.json")])
        return parser.get_parsed_content("network_def")

    denoiser = network("mri_denoising")
    assert all(float(p.detach().abs().max()) == 0.0 for p in denoiser.head.parameters())
    assert float(network("mri_segmentation").head.conv.weight.detach().abs().max()) > 0.0


# --------------------------------------------------------------------------------- training contrast: re-simulated


def synthetic_maps(shape=(12, 12, 12)) -> dict:
    """Three tissues in a cube with physical PD, R1, R2* (1/s) and MT values, channel-first like LoadImaged's."""
    labels = torch.zeros(shape, dtype=torch.long)
    labels[2:10, 2:10, 2:10] = 1
    labels[4:8, 4:8, 4:8] = 2
    values = {"pd": (0.0, 0.8, 0.7), "r1": (0.0, 0.8, 1.3), "r2s": (0.0, 15.0, 25.0), "mt": (0.0, 0.01, 0.03)}
    item = {name: torch.tensor(v, dtype=torch.float32)[labels][None] for name, v in values.items()}
    item["label"] = labels[None].to(torch.uint8)
    return item


def draws(seed, steps=6):
    transform = RandTrainingContrastd(map_keys=("pd", "r1", "r2s", "mt"))
    transform.set_random_state(seed)
    return [transform(synthetic_maps()) for _ in range(steps)]


def test_simulated_mode_draws_a_new_contrast_every_step_reproducibly_by_seed():
    first, again, other = draws(0), draws(0), draws(1)
    sequences = [item["image"].meta["sequence"] for item in first]
    assert len(set(sequences)) > 1  # several sequences among six steps (uniform over four)
    for a, b in zip(first, first[1:]):
        assert not torch.allclose(a["image"], b["image"])  # every step another contrast
    for a, b in zip(first, again):
        assert a["image"].meta["sequence"] == b["image"].meta["sequence"]
        assert torch.equal(a["image"], b["image"])  # same seed: same contrasts in the same order
    assert any(not torch.allclose(a["image"], b["image"]) for a, b in zip(first, other))
    for item in first:
        image = item["image"]
        assert image.shape == (1, 12, 12, 12) and image.dtype == torch.float32
        assert float(image.mean()) == pytest.approx(0.0, abs=1e-5)  # z-scored like NormalizeIntensityd
        assert float(image.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
        assert set(item) == {"image", "label"}  # the maps are dropped once used; the label is untouched
        assert torch.equal(item["label"], synthetic_maps()["label"])
        assert isinstance(json.loads(image.meta["protocol"]), dict)  # text: collates across sequences


def test_fixed_mode_passes_the_item_through_and_modes_are_checked(tmp_path):
    item = {"image": torch.rand(1, 4, 4, 4), "label": torch.zeros(1, 4, 4, 4)}
    out = RandTrainingContrastd(mode="fixed")(item)
    assert out.keys() == item.keys() and out["image"] is item["image"]
    assert training_keys("fixed", "image", "label") == ["image", "label"]
    assert training_keys("simulated", "image", None, ("pd", "r1")) == ["pd", "r1"]
    with pytest.raises(InputError, match="training_contrast"):
        RandTrainingContrastd(mode="random")
    with pytest.raises(InputError, match="rician_prob"):
        RandTrainingContrastd(rician_prob=2.0)
    images_only = tmp_path / "datalist.json"
    images_only.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}))
    check_training_contrast(str(images_only), "fixed")
    with pytest.raises(InputError, match=r"datalist.json.*qMRI maps.*'fixed'"):
        check_training_contrast(str(images_only), "simulated")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("downstream_demo")
    resolve_datalist("", folder, BRAIN_DOWNSTREAM_DEMO, resolution_mm=4.0, subjects=4, validation_subjects=1,
                     test_subjects=1)
    return folder


@pytest.mark.parametrize("bundle", ["mri_segmentation", "mri_denoising"])
@pytest.mark.parametrize("extra", [[], ["simulation_augmented.json"], ["finetune.json"]])
def test_bundle_configs_resolve_each_mode(bundle, extra, demo_data, tmp_path):
    configs = REPO / "bundles" / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in ["train.json", *extra, "cpu_demo.json"]])
    parser.update({"demo_data_dir": str(demo_data), "bundle_root": str(tmp_path), "num_workers": 0,
                   "progress_bar": False, "features": [4, 8, 8], "decoder_features": [8, 8, 4, 4],
                   "patch_size": [16, 16, 16], "demo_resolution_mm": 4.0, "demo_subjects": 4,
                   "demo_test_subjects": 1})
    groups = parser.get_parsed_content("optimizer").param_groups
    rate = parser.get_parsed_content("learning_rate")
    head = parser.get("head_learning_rate")  # mri_segmentation's cpu_demo.json: the output convolution at 10x
    heads = [] if head is None else [head]
    expected = {"": [rate] + heads, "simulation_augmented.json": [rate] + heads + [rate],
                "finetune.json": [rate] + heads + [0.1 * rate]}
    assert [g["lr"] for g in groups] == pytest.approx(expected["".join(extra)])
    item = parser.get_parsed_content("train#augmented_dataset")[0]
    item = item[0] if isinstance(item, list) else item
    assert item["image"].shape == (1, 16, 16, 16)
    simulated = extra == ["simulation_augmented.json"]
    assert (item["image"].meta.get("sequence") in ("fse", "gre", "flair", "mprage")) is simulated
    assert not {"pd", "r1", "r2s"} & set(item)
    # The fixed mode's augmentation holds no contrast transform, so the random streams of its crops and intensity
    # transforms (Compose seeds its randomizable transforms in order) are the ones they had before the modes.
    transforms = parser.get_parsed_content("train#augmentation").transforms
    assert [type(t).__name__ == "RandTrainingContrastd" for t in transforms][:1] == [simulated]
    parser.get_parsed_content("initialize")  # the up-front checks pass (maps present in the demo data)


# ------------------------------------------------------------------------------------------ grid and table columns


def test_demo_grid_has_the_two_new_columns_with_the_same_budget():
    grid = load_grid(REPO / "experiments" / "demo.yaml")
    assert grid.columns[-2:] == ("simaug", "seqinv_finetuned")
    runs = {(r.task, r.mode, r.seed): r for r in expand_runs(grid) if r.kind == "downstream"}
    for task in ("tissue", "denoising"):
        for seed in grid.seeds:
            frozen, simaug, tuned = (runs[(task, m, seed)] for m in ("seqinv", "simaug", "seqinv_finetuned"))
            assert simaug.upstream is None and simaug.overrides["pretrained"] is False
            assert simaug.overrides["training_contrast"] == "simulated"
            assert simaug.overrides["freeze_encoder"] is False
            assert tuned.upstream is frozen.upstream and tuned.overrides["freeze_encoder"] is False
            # Same configs, data, rates and budget as the other columns: only the mode keys differ, and for Sim.
            # aug.'s tissue run its own schedule and contrast floor (a whole network from random init on a new
            # contrast every step: 1024 steps, measured in bundles/mri_segmentation/docs/README.md).
            simaug_tissue = {"num_epochs", "val_interval", "simulation_min_tissue_contrast"}
            for run in (simaug, tuned):
                differing = {k for k in set(run.overrides) | set(frozen.overrides)
                             if run.overrides.get(k) != frozen.overrides.get(k)}
                allowed = simaug_tissue if (run is simaug and task == "tissue") else set()
                assert differing <= {"training_contrast", "freeze_encoder", "encoder_learning_rate", "pretrained",
                                     *allowed}
                assert run.spec is frozen.spec
            if task == "tissue":
                assert simaug.overrides["num_epochs"] == 16 and simaug.overrides["simulation_min_tissue_contrast"] > 0
    demo = load_demo_grid()
    demo_runs = [r for r in expand_runs(demo) if r.kind == "downstream"]
    assert {(r.task, r.mode) for r in demo_runs if r.mode in ("simaug", "seqinv_finetuned")} == \
        {("tissue", "simaug"), ("tissue", "seqinv_finetuned")}  # the demo's budget: the tissue task only
    assert demo.columns_for("denoising") == demo.modes


def test_tables_show_the_new_columns(tmp_path):
    grid = load_grid(REPO / "experiments" / "demo.yaml")
    grid = replace(grid, seeds=(0,))
    runs = [r for r in expand_runs(grid) if r.kind == "downstream"]
    value = {mode: 0.1 * index for index, mode in enumerate(grid.columns, start=1)}
    results = [RunResult(r, STATUS_OK, tmp_path, summary={"by_site_sequence": {
        "phantom/T1w": {m: {"mean": value[r.mode]} for m in ("dice_mean", "hd95_mm_mean", "psnr_db")},
        "phantom/T2w": {m: {"mean": value[r.mode]} for m in ("dice_mean", "hd95_mm_mean", "psnr_db")}}})
        for r in runs]
    records = collect(grid, results)
    table = markdown_table(records, grid, grid.downstream[0], "dice_mean")
    header = table.splitlines()[2]
    assert header.endswith("Sim. aug. (random init) | 100% labels<br>SeqInv, fine-tuned |")
    row = [line for line in table.splitlines() if line.startswith("| phantom [T2w]")][0]
    assert row.endswith("| <u>0.500 ± 0.000</u> | **0.600 ± 0.000** |")
    plain = format_plain_tables(records, grid)
    assert MODE_TITLES["simaug"] in plain and MODE_TITLES["seqinv_finetuned"] in plain


def test_bad_variants_are_named(tmp_path):
    content = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    content["bundles"] = str(REPO / "bundles")
    for variants, message in (({"tuned": {"encoder": "moco"}}, "'encoder' must be one of"),
                              ({"seqinv": {"encoder": "seqinv"}}, "name of its own"),
                              ({"tuned": {"encoder": "seqinv", "tasks": ["lesion"]}}, "'tasks'"),
                              ({"tuned": {"encoder": "seqinv", "overrides": {"seed": 3}}}, "sets \\['seed'\\]")):
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({**content, "variants": variants}))
        with pytest.raises(InputError, match=message):
            load_grid(path)


def test_variant_psnr_cells_use_the_same_rows(tmp_path):
    grid = load_grid(REPO / "experiments" / "demo.yaml")
    grid = replace(grid, seeds=(0, 1))
    runs = [r for r in expand_runs(grid) if r.kind == "downstream" and r.task == "denoising"]
    results = [RunResult(r, STATUS_OK, tmp_path, summary={"by_site_sequence": {
        g: {"psnr_gain_db": {"mean": 1.0 + r.seed}} for g in ("phantom/T1w", "mni152/T1w")}}) for r in runs]
    records = [r for r in collect(grid, results) if r["metric"] == "psnr_gain_db"]
    cells = {(r["group"], r["mode"]): r for r in records}
    for mode in grid.columns:
        for group in ("phantom/T1w", "mni152/T1w"):
            assert cells[(group, mode)]["mean"] == pytest.approx(1.5)
            assert cells[(group, mode)]["std"] == pytest.approx(math.sqrt(0.5))
    assert np.isfinite([r["mean"] for r in records]).all()
