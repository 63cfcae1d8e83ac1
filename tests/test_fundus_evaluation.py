"""The fundus evaluation as a MONAI evaluator (FundusEvaluationReport, CAMOverlayWriter) gives what the plain
functions give (up to float rounding between batchings): one scorer serves both."""

import csv
import json

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator

from mri_ssl.engines.fundus_evaluation import (
    CAMInferer,
    ClassificationScorer,
    FundusEvaluationReport,
    evaluate_classification,
)
from mri_ssl.engines.heatmaps import CAMOverlayWriter
from mri_ssl.networks import CAMClassifier
from tolerance import assert_close_tree, csv_rows


def cases():
    g = torch.Generator().manual_seed(0)
    items = []
    for index in range(6):
        mask = torch.zeros(1, 16, 16, dtype=torch.uint8)
        if index % 2:
            mask[0, 4:8, 4:8] = 1
        items.append({"image": torch.rand(3, 16, 16, generator=g), "abnormal": index % 2, "mask": mask,
                      "image_path": f"/data/fundus_{index}.png"})
    return items


def test_evaluator_report_equals_the_function(tmp_path):
    torch.manual_seed(0)
    network = CAMClassifier(encoder_config={"features": (4, 8)}).eval()
    expected = evaluate_classification(network, cases(), tmp_path / "function", cam_localisation=True,
                                       progress=False)
    report = FundusEvaluationReport(ClassificationScorer(cam_localisation=True), tmp_path / "evaluator")
    loader = DataLoader(Dataset(cases()), batch_size=2)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader,
                                    network=network, inferer=CAMInferer(), val_handlers=[report], decollate=True)
    evaluator.run()
    # Batches of 2 here, another batching in the function: the same numbers up to float rounding.
    assert_close_tree(report.summary, expected)
    assert_close_tree(json.loads((tmp_path / "evaluator" / "summary.json").read_text()), expected)
    assert_close_tree(csv_rows(tmp_path / "evaluator" / "per_case.csv"),
                      csv_rows(tmp_path / "function" / "per_case.csv"))
    assert expected["cases"] == 6 and expected["localised_cases"] == 3
    assert evaluator.state.metrics["roc_auc"] == pytest.approx(expected["roc_auc"])


def test_overlay_writer_writes_one_png_per_case(tmp_path):
    torch.manual_seed(0)
    network = CAMClassifier(encoder_config={"features": (4, 8)}).eval()
    writer = CAMOverlayWriter(tmp_path)
    loader = DataLoader(Dataset(cases()), batch_size=3)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader,
                                    network=network, inferer=CAMInferer(), val_handlers=[writer], decollate=True)
    evaluator.run()
    with open(writer.csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == [f"/data/fundus_{i}.png" for i in range(6)]
    assert sorted(p.name for p in tmp_path.glob("*_cam.png")) == sorted(f"fundus_{i}_cam.png" for i in range(6))
    logits = network(torch.stack([c["image"] for c in cases()]))
    probabilities = torch.softmax(logits, dim=1)[:, 1]
    assert [float(r["p_abnormal"]) for r in rows] == pytest.approx(probabilities.tolist(), abs=1e-5)
