"""Each bundle's inference config in the model zoo's unit-test style (model-zoo ``ci/unit_tests/test_<bundle>.py``).

As the zoo's tests do: fake data written to a temporary folder, ``ConfigWorkflow(workflow_type="infer")`` on
``configs/inference.json`` **alone** with a few overrides (the data, weights loading off), then the zoo's
``check_workflow``: ``initialize()``, ``check_properties()`` must report nothing missing, ``run()``, ``finalize()``.
One parametrised test, since the pattern repeats; each case says how its fake data look and what the run must write.
"""

from __future__ import annotations

import csv
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
