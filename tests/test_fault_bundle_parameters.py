"""Fault injection on bundle parameters: nonsense values fail at once, in one line naming the parameter.

The probe of issue 19 found ``--crop_size "[33,33,33]"`` failing at the first iteration after the whole dataset was
cached, ``--learning_rate nan`` as ``TypeError: '<=' not supported between 'float' and 'str'``, ``num_epochs 0`` as a
``ZeroDivisionError`` in the LR lambda. Every training config now starts with ``check_bundle_parameters``.
"""

import json
import math
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from bundle_runner import REPO, bundle_dir, run_bundle, write_override
from mri_ssl.errors import InputError
from mri_ssl.parameters import check_bundle_parameters

CHECK_STEP = "$check_bundle_parameters(@checked_parameters, multiple_of=@checked_multiples, exit_on_error=True)"
# Where a size is checked against the network's downsampling factor, building the network consumes random numbers:
# the values are checked first, then the seed is set, so the network built for the size check is the seeded one.
SEEDED_CHECK_STEPS = ["$check_bundle_parameters(@checked_parameters, exit_on_error=True)",
                      "$monai.utils.set_determinism(seed=@seed)", CHECK_STEP]


def training_configs() -> list[Path]:
    """Every config of every bundle that trains (its initialize attaches a checkpointer)."""
    found = []
    for path in sorted(REPO.glob("bundles/*/configs/*.json")):
        content = json.loads(path.read_text())
        steps = content.get("initialize", []) if isinstance(content, dict) else []
        if any("checkpointer.attach" in step for step in steps):
            found.append(path)
    return found


def test_every_training_config_checks_its_parameters_before_anything_else():
    configs = training_configs()
    assert len({path.parents[1].name for path in configs}) == 6
    for path in configs:
        content = json.loads(path.read_text())
        steps = content["initialize"]
        assert steps[0] == CHECK_STEP or steps[:3] == SEEDED_CHECK_STEPS, path
        if "@network_def" in json.dumps(content.get("checked_multiples", {})):
            assert steps[:3] == SEEDED_CHECK_STEPS, f"{path}: the network is built before the seed is set"
        if "imports" in content:
            assert "$from mri_ssl.parameters import check_bundle_parameters" in content["imports"], path


def parser_for(bundle: str, config: str, tmp_path: Path, **overrides) -> ConfigParser:
    """The bundle's config + its cpu_demo.json + ``overrides``, as `monai.bundle run` would read them."""
    folder = bundle_dir(bundle) / "configs"
    files = [folder / config] + ([folder / "cpu_demo.json"] if (folder / "cpu_demo.json").is_file() else [])
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if "encoder_name" in parser.config:  # fundus transfer: a random encoder, no pretraining run needed
        parser.update({"encoder_name": "random"})
    parser.update({"bundle_root": str(tmp_path), **overrides})
    return parser


FIRST_STEPS = [("mri_ssl_pretrain", "train.json"), ("mri_segmentation", "train.json"), ("mri_denoising", "train.json"),
               ("cardiac_sequence_classification", "train.json"), ("cardiac_sequence_classification", "pretrain.json"),
               ("cmr_video_text", "train.json"), ("cmr_video_text", "classify.json"),
               ("fundus_camcontrast", "stage1.json"),
               ("fundus_camcontrast", "pretrain.json"), ("fundus_camcontrast", "finetune_cls.json"),
               ("fundus_camcontrast", "finetune_seg.json")]


def first_step_error(parser: ConfigParser, capsys) -> str:
    """The one line the parameter check prints when it stops the bundle (exit status 2): the initialize steps up to
    the full check (``CHECK_STEP``) are run."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run_checks(parser)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def run_checks(parser: ConfigParser) -> None:
    """Run the parameter-check steps at the start of ``initialize`` (through ``CHECK_STEP``)."""
    steps = parser.config["initialize"]
    for index in range(steps.index(CHECK_STEP) + 1):
        parser.get_parsed_content(f"initialize#{index}")


@pytest.mark.parametrize("bundle, config", FIRST_STEPS)
def test_the_shipped_values_pass_and_nonsense_fails_before_any_data(bundle, config, tmp_path, capsys):
    run_checks(parser_for(bundle, config, tmp_path))  # the shipped values pass
    cardiac_pretrain = bundle.startswith("cardiac") and config == "pretrain.json"
    cmr_classifier = config == "classify.json"
    clip_training = bundle == "cmr_video_text" and not cmr_classifier
    epochs = "pretrain_epochs" if cardiac_pretrain else "max_epochs" if clip_training else "num_epochs"
    rate = ("base_learning_rate" if cardiac_pretrain else "classifier_learning_rate" if cmr_classifier
            else "learning_rate")
    nonsense = [(rate, "nan", "'nan' (text), needs a finite number > 0"), (epochs, 0, "0, needs a whole number >= 1")]
    if cmr_classifier:  # the fine-tuned / from-scratch encoder's own rate
        nonsense.append(("encoder_learning_rate", -1e-3, "-0.001, needs a finite number > 0"))
    for name, value, needs in nonsense:
        line = first_step_error(parser_for(bundle, config, tmp_path, **{name: value}), capsys)
        assert line == f"InputError: {name}: got {needs}"
    assert list(tmp_path.iterdir()) == [], "data were written before the parameters were checked"


def test_the_pretraining_probe_groups_are_checked_before_any_data(tmp_path, capsys):
    line = first_step_error(parser_for("mri_ssl_pretrain", "train.json", tmp_path, probe_groups=0), capsys)
    assert line == "InputError: probe_groups: got 0, needs a whole number >= 1"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bundle, name, value, factor", [
    ("mri_ssl_pretrain", "crop_size", [33, 33, 33], 16), ("mri_segmentation", "patch_size", [40, 40, 40], 16),
    ("cardiac_sequence_classification", "image_size", 90, 12)])
def test_sizes_must_fit_the_network(bundle, name, value, factor, tmp_path, capsys):
    line = first_step_error(parser_for(bundle, "train.json", tmp_path, **{name: value}), capsys)
    assert line.startswith(f"InputError: {name}: got {value}, needs each side a multiple of {factor} (")


@pytest.mark.parametrize("name, value, message", [
    ("learning_rate", "nan", "learning_rate: got 'nan' (text), needs a finite number > 0"),
    ("learning_rate", math.inf, "learning_rate: got inf, needs a finite number > 0"),
    ("learning_rate", -1e-3, "learning_rate: got -0.001, needs a finite number > 0"),
    ("num_epochs", -5, "num_epochs: got -5, needs a whole number >= 1"),
    ("num_epochs", 2.5, "num_epochs: got 2.5, needs a whole number >= 1"),
    ("num_epochs", "5", "num_epochs: got '5' (text), needs a whole number >= 1"),
    ("batch_size", 0, "batch_size: got 0, needs a whole number >= 1"),
    ("batch_size", True, "batch_size: got True, needs a whole number >= 1"),
    ("epoch_length", 0, "epoch_length: got 0, needs a whole number >= 1, or null"),
    ("crop_size", [32, 0, 32], "crop_size: got [32, 0, 32], needs a whole number or a list of whole numbers, "
                               "each >= 1"),
    ("crop_size", [], "crop_size: got an empty list"),
    ("dropout", 1.0, "dropout: got 1.0, needs a finite number >= 0 and < 1"),
    ("min_tissue_contrast", 0.5, "min_tissue_contrast: got 0.5, needs a finite number >= 0 and < 0.5"),
    ("label_fraction", 0, "label_fraction: got 0, needs a finite number > 0 and <= 1"),
    ("num_workers", -1, "num_workers: got -1, needs a whole number >= 0"),
    ("probe_groups", 0, "probe_groups: got 0, needs a whole number >= 1"),
    ("probe_crops_per_subject", 2.5, "probe_crops_per_subject: got 2.5, needs a whole number >= 1"),
])
def test_one_line_names_the_parameter_what_it_got_and_what_it_needs(name, value, message):
    with pytest.raises(InputError) as caught:
        check_bundle_parameters({name: value})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_good_values_pass_and_unknown_names_are_a_config_mistake():
    check_bundle_parameters({"learning_rate": 1, "epoch_length": None, "crop_size": [32, 48, 64], "patch_size": 12},
                            multiple_of={"crop_size": 16})
    with pytest.raises(KeyError, match="no rule for bundle parameter 'lerning_rate'"):
        check_bundle_parameters({"lerning_rate": 1e-3})


@pytest.mark.slow  # a real `monai.bundle run` process; the in-process tests above cover every config
def test_the_command_line_probe_fails_in_seconds_with_one_line(tmp_path):
    """`python -m monai.bundle run ... --crop_size "[33,33,33]"` (here as an override file) ends before caching."""
    override = write_override(tmp_path / "cfg", crop_size=[33, 33, 33])
    configs = bundle_dir("mri_ssl_pretrain") / "configs"
    done = run_bundle(tmp_path, [configs / "train.json", configs / "cpu_demo.json", override], timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("InputError: crop_size: got [33, 33, 33], needs each side a "
                                                    "multiple of 16 (the encoder's downsampling factor)")
    assert not (tmp_path / "demo_data").exists()


def test_fundus_stage1_learning_rate_follows_learning_rate_unless_set(tmp_path, capsys):
    # stage1.json's optimiser reads stage1_learning_rate, which defaults to learning_rate (the paper's 1e-4);
    # cpu_demo.json sets it on its own, so the CPU demo's stage 1 does not change the rate of the other stages.
    folder = bundle_dir("fundus_camcontrast") / "configs"
    alone = ConfigParser()
    alone.read_config(str(folder / "stage1.json"))
    alone.update({"learning_rate": 0.02})
    assert alone.get_parsed_content("stage1_learning_rate") == 0.02
    demo_rate = json.loads((folder / "cpu_demo.json").read_text())["stage1_learning_rate"]
    demo = parser_for("fundus_camcontrast", "stage1.json", tmp_path)
    assert demo.get_parsed_content("stage1_learning_rate") == demo_rate != demo.get_parsed_content("learning_rate")
    line = first_step_error(parser_for("fundus_camcontrast", "stage1.json", tmp_path, stage1_learning_rate="nan"),
                            capsys)
    assert line == "InputError: stage1_learning_rate: got 'nan' (text), needs a finite number > 0"
    assert list(tmp_path.iterdir()) == [], "data were written before the parameters were checked"
