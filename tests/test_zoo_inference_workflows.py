"""Each bundle's inference config in the model zoo's unit-test style (model-zoo ``ci/unit_tests/test_<bundle>.py``).

As the zoo's tests do: fake data written to a temporary folder, ``ConfigWorkflow(workflow_type="infer")`` on
``configs/inference.json`` **alone** with a few overrides (the data, weights loading off), then the zoo's
``check_workflow``: ``initialize()``, ``check_properties()`` must report nothing missing, ``run()``, ``finalize()``.
One parametrised test, since the pattern repeats; each case says how its fake data look and what the run must write.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigWorkflow
from PIL import Image

from bundle_runner import bundle_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nifti_images(folder: Path, shape: tuple[int, ...], count: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"image_{index}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), np.eye(4)), str(path))
        paths.append(str(path))
    return paths


def png_images(folder: Path, side: int, count: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"image_{index}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def nifti_outputs(postfix):
    return lambda root, inputs: sorted((root / "predictions").glob(f"*_{postfix}.nii.gz"))


def csv_rows(relative):
    def rows(root, inputs):
        with open(root / relative, newline="") as handle:
            return list(csv.reader(handle))
    return rows


# bundle: (fake inputs, overrides given those inputs, what the run wrote, how many outputs per input + extra)
CASES = {
    "mri_ssl_pretrain": (lambda folder: nifti_images(folder, (32, 32, 32)),
                         lambda folder, inputs: {"input_files": inputs},
                         csv_rows("features/features.csv"), 1),
    "mri_segmentation": (lambda folder: nifti_images(folder, (40, 36, 32)),
                         lambda folder, inputs: {"input_dir": str(folder), "patch_size": [32, 32, 32]},
                         nifti_outputs("seg"), 0),
    "mri_denoising": (lambda folder: nifti_images(folder, (40, 36, 32)),
                      lambda folder, inputs: {"input_dir": str(folder), "patch_size": [32, 32, 32]},
                      nifti_outputs("denoised"), 0),
    "fundus_camcontrast": (lambda folder: png_images(folder, 64),
                           lambda folder, inputs: {"input_dir": str(folder), "image_size": 64},
                           lambda root, inputs: sorted((root / "predictions" / "stage1").glob("*.png")), 0),
    "cardiac_sequence_classification": (lambda folder: nifti_images(folder, (40, 40)),
                                        lambda folder, inputs: {"input_dir": str(folder)},
                                        csv_rows("predictions/predictions.csv"), 0),
}


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_inference_config_alone_runs_as_the_zoo_tests_it(tmp_path, bundle):
    make_inputs, overrides, outputs, extra_rows = CASES[bundle]
    data = tmp_path / "data"
    data.mkdir()
    inputs = make_inputs(data)
    root = bundle_dir(bundle)
    workflow = ConfigWorkflow(workflow_type="infer", config_file=str(root / "configs" / "inference.json"),
                              meta_file=str(root / "configs" / "metadata.json"),
                              logging_file=str(root / "configs" / "logging.conf"),
                              bundle_root=str(tmp_path), load_pretrain=False, progress_bar=False, num_workers=0,
                              **overrides(data, inputs))
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    written = outputs(tmp_path, inputs)
    assert len(written) == len(inputs) + extra_rows, written


def test_cmr_inference_config_alone_runs_as_the_zoo_tests_it(tmp_path):
    """The video-text bundle reads studies through a manifest, so its "fake data" are a few tiny demo studies; with
    no shipped weights the tokenizer is built from their training reports, as train.json builds it."""
    root = bundle_dir("cmr_video_text")
    workflow = ConfigWorkflow(
        workflow_type="infer", config_file=str(root / "configs" / "inference.json"),
        meta_file=str(root / "configs" / "metadata.json"), logging_file=str(root / "configs" / "logging.conf"),
        bundle_root=str(tmp_path), load_pretrain=False, progress_bar=False,
        tokenizer="$build_text_tokenizer(training_reports(@manifest), @max_length, @text_model_dir)",
        demo_studies=12, demo_cine_frames=4, demo_lge_slices=2, image_size=16, num_frames=4, cnn_features=[4, 8],
        temporal_heads=2, text_width=16, text_layers=1, text_heads=2, embed_dim=32)
    workflow.initialize()
    assert workflow.check_properties() in (None, [])
    workflow.run()
    workflow.finalize()
    rankings = json.loads((tmp_path / "predictions" / "rankings.json").read_text())["rankings"]
    studies = workflow.parser.get_parsed_content("dataset").studies
    assert sorted(rankings) == sorted(s["study_id"] for s in studies) and studies
    assert all(len(ranked) == min(5, len(studies)) for ranked in rankings.values())
