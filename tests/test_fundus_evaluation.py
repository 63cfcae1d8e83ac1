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
from mri_ssl.errors import InputError
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


def localisation_case(size: int = 64):
    """An abnormal image whose one lesion fills rows 40..47, columns 8..15: CAM cell (5, 1) of an 8 x 8 CAM (stride
    8). Rows and columns differ, so a transposed CAM or mask misses."""
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    mask[0, 40:48, 8:16] = 1
    return {"image": torch.zeros(3, size, size), "abnormal": 1, "mask": mask, "image_path": "/data/lesion.png"}


def cams_peaking_at(abnormal_cell: tuple[int, int], normal_cell: tuple[int, int] = (0, 0)) -> torch.Tensor:
    cams = torch.zeros(2, 8, 8)
    cams[0][normal_cell] = 5.0
    cams[1][abnormal_cell] = 1.0
    return cams


@pytest.mark.parametrize("abnormal_cell, normal_cell, expected", [
    ((5, 1), (0, 0), 1.0),   # the abnormal CAM's maximum on the lesion: a hit, wherever the normal CAM peaks
    ((1, 5), (0, 0), 0.0),   # transposed: off every lesion
    ((0, 7), (5, 1), 0.0),   # only the *normal* class's CAM peaks on the lesion: the pointing game reads class 1
    ((6, 1), (0, 0), 0.0),   # the next cell down: 1 pixel below the lesion at best, a miss without tolerance
])
def test_pointing_game_closed_form(abnormal_cell, normal_cell, expected):
    scorer = ClassificationScorer(cam_localisation=True)
    scorer.add(localisation_case(), {"logits": torch.tensor([0.0, 1.0]),
                                     "cams": cams_peaking_at(abnormal_cell, normal_cell)})
    rows, summary = scorer.finish()
    assert summary["localised_cases"] == 1
    assert summary["pointing_game"] == pytest.approx(expected)
    assert int(rows[0]["pointing_hit"]) == int(expected)


def test_pointing_tolerance_counts_near_misses_by_distance():
    """Cell (6, 1) covers rows 48..55; after bilinear upsampling its maximum sits at the cell's centre (row 51.5
    -> 51 or 52), 4-5 pixels below the lesion's last row 47: a hit at tolerance 5, not at 3."""
    case, cams = localisation_case(), {"logits": torch.tensor([0.0, 1.0]), "cams": cams_peaking_at((6, 1))}
    for tolerance, expected in ((3.0, 0.0), (5.0, 1.0)):
        scorer = ClassificationScorer(cam_localisation=True, pointing_tolerance=tolerance)
        scorer.add(case, cams)
        rows, summary = scorer.finish()
        assert summary["pointing_game"] == 0.0
        assert summary["pointing_game_tolerant"] == pytest.approx(expected)
        assert 4.0 <= float(rows[0]["pointing_distance_px"]) <= 5.0
    with pytest.raises(InputError, match="pointing_tolerance"):
        ClassificationScorer(cam_localisation=True, pointing_tolerance=-1.0)


def test_pointing_game_of_random_maxima_is_the_lesion_area_fraction():
    """A CAM of independent noise puts its maximum on a uniformly random pixel: the hit rate over many draws is the
    lesion's share of the image (64 of 4096 pixels here), not 0."""
    g = torch.Generator().manual_seed(0)
    scorer = ClassificationScorer(cam_localisation=True)
    for _ in range(2000):
        cams = torch.rand(2, 64, 64, generator=g)
        scorer.add(localisation_case(), {"logits": torch.tensor([0.0, 1.0]), "cams": cams})
    assert scorer.finish()[1]["pointing_game"] == pytest.approx(64 / 4096, abs=0.01)
