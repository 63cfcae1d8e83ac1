"""Joint DR / DME grading (IDRiD): the manifest's grades, the joint accuracy metric, the two-head grader and its loss,
and the bundle's grading fine-tuning + evaluation on a fake IDRiD layout."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundle_runner import bundle_dir, run_bundle, write_override
from fake_idrid import GRADING, HEADER, write_fake_idrid
from mri_ssl.cli import main
from mri_ssl.data.manifests.photo import scan_idrid
from mri_ssl.data.photo.demo import write_fundus_demo
from mri_ssl.data.photo.fundus import fundus_entries
from mri_ssl.errors import InputError
from mri_ssl.losses import JointGradingLoss
from mri_ssl.metrics.grading import JointAccuracyMetric, grading_accuracies, joint_accuracy
from mri_ssl.networks import JointGradingClassifier

CONFIGS = bundle_dir("fundus_camcontrast") / "configs"
TRAINING_GRADES = [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (0, 1), (2, 0), (1, 1), (3, 0), (0, 2)]
TESTING_GRADES = [(0, 0), (2, 2), (4, 1)]


def test_joint_accuracy_closed_form():
    # image 0: both right; 1: both right; 2: DR wrong; 3: DME wrong; 4: both wrong
    dr_pred, dr_true = [0, 1, 2, 3, 4], [0, 1, 0, 3, 1]
    dme_pred, dme_true = [0, 2, 1, 1, 0], [0, 2, 1, 0, 2]
    scores = grading_accuracies(dr_pred, dr_true, dme_pred, dme_true)
    assert scores == {"dr_accuracy": 3 / 5, "dme_accuracy": 3 / 5, "average_accuracy": 3 / 5, "joint_accuracy": 2 / 5}
    assert joint_accuracy(dr_pred, dr_true, dme_pred, dme_true) == 2 / 5
    # Joint accuracy lies between max(0, DR + DME - 1) and min(DR, DME), and is not the product or the average.
    rng = np.random.default_rng(0)
    for _ in range(20):
        dr, dme = rng.integers(0, 5, (2, 30)), rng.integers(0, 3, (2, 30))
        s = grading_accuracies(dr[0], dr[1], dme[0], dme[1])
        assert max(0.0, s["dr_accuracy"] + s["dme_accuracy"] - 1) - 1e-12 <= s["joint_accuracy"]
        assert s["joint_accuracy"] <= min(s["dr_accuracy"], s["dme_accuracy"]) + 1e-12
    with pytest.raises(InputError, match="grade vectors"):
        grading_accuracies([0, 1], [0], [0, 1], [0, 1])


def test_monai_metric_on_logits_equals_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(12, 8)
    grades = torch.stack([torch.randint(0, 5, (12,)), torch.randint(0, 3, (12,))], dim=1)
    expected = joint_accuracy(logits[:, :5].argmax(1), grades[:, 0], logits[:, 5:].argmax(1), grades[:, 1])
    metric = JointAccuracyMetric()
    metric(y_pred=list(logits[:7]), y=list(grades[:7]))  # decollated items, as MONAI's evaluators pass them
    metric(y_pred=logits[7:], y=grades[7:])  # a batch
    assert metric.aggregate().item() == pytest.approx(expected)
    # Forcing the argmax to the truth gives 1.
    perfect = torch.full((12, 8), -5.0)
    perfect[torch.arange(12), grades[:, 0]] = 5.0
    perfect[torch.arange(12), 5 + grades[:, 1]] = 5.0
    metric.reset()
    metric(y_pred=perfect, y=grades)
    assert metric.aggregate().item() == 1.0


def test_two_heads_and_their_loss():
    torch.manual_seed(0)
    model = JointGradingClassifier(encoder_config={"features": (4, 8)}, freeze_encoder=True)
    logits = model(torch.rand(3, 3, 16, 16))
    assert logits.shape == (3, 8)
    grades = torch.tensor([[0, 0], [4, 2], [2, 1]])
    loss = JointGradingLoss()(logits, grades)
    expected = F.cross_entropy(logits[:, :5], grades[:, 0]) + F.cross_entropy(logits[:, 5:], grades[:, 1])
    assert loss.item() == pytest.approx(expected.item())
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}
    with pytest.raises(InputError, match="grades"):
        JointGradingLoss()(logits, grades[:, 0])


def test_idrid_manifest_carries_both_grades(tmp_path):
    folder = write_fake_idrid(tmp_path / "IDRiD", TRAINING_GRADES, TESTING_GRADES, segmentation=True)
    out = tmp_path / "idrid.json"
    assert main(["manifest", "idrid", str(folder), "--out", str(out)]) == 0
    content = json.loads(out.read_text())
    expected = {f"idrid_IDRiD_{i + 1:03d}": grades for i, grades in enumerate(TRAINING_GRADES + TESTING_GRADES)}
    graded = {e["subject"]: e for split in ("training", "validation", "test") for e in content[split]
              if "dr_grade" in e}
    assert {s: (e["dr_grade"], e["dme_grade"]) for s, e in graded.items()} == expected
    assert all(e["abnormal"] == int(e["dr_grade"] > 0 or e["dme_grade"] > 0) for e in graded.values())
    assert {e["subject"] for e in content["test"]} == {f"idrid_IDRiD_{i:03d}" for i in (11, 12, 13)}
    # Grading entries carry (DR, DME) labels; the segmentation image (no grades) is left out of grading.
    training = fundus_entries(out, "training", grades=True) + fundus_entries(out, "validation", grades=True)
    assert len(training) == len(TRAINING_GRADES)
    assert all(e["label"].tolist() == [e["dr_grade"], e["dme_grade"]] for e in training)
    assert any(e.get("mask") for e in fundus_entries(out, "training") + fundus_entries(out, "validation"))


@pytest.mark.parametrize("bad", ["5", "x", "1.5", "-1"])
def test_idrid_grade_out_of_range_names_the_label_file(tmp_path, bad):
    folder = write_fake_idrid(tmp_path / "IDRiD", [(0, 0), (1, 1)], [(0, 0)])
    labels = folder / GRADING / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv"
    labels.write_text(HEADER + f"IDRiD_001,{bad},0\nIDRiD_002,1,1\n")
    with pytest.raises(InputError, match="Training Labels.csv: image 'IDRiD_001' has Retinopathy grade") as caught:
        scan_idrid(folder)
    assert "from 0 to 4" in str(caught.value)


def test_demo_set_has_no_grades_and_says_so(tmp_path):
    write_fundus_demo(tmp_path, images=4, validation_images=1, test_images=1, size=32, seed=0)
    with pytest.raises(InputError, match="no training entry has the grades 'dr_grade' and 'dme_grade'"):
        fundus_entries(tmp_path / "datalist.json", "training", grades=True)


@pytest.mark.slow
def test_bundle_joint_grading_finetune_and_evaluate(tmp_path):
    folder = write_fake_idrid(tmp_path / "IDRiD", TRAINING_GRADES, TESTING_GRADES, size=32)
    manifest = tmp_path / "idrid.json"
    assert main(["manifest", "idrid", str(folder), "--out", str(manifest)]) == 0
    tiny = write_override(tmp_path, dataset_dir=str(manifest), image_size=32, features=[4, 8, 8], batch_size=4,
                          num_epochs=2, num_workers=0, progress_bar=False, encoder_name="random")
    configs = [str(CONFIGS / "finetune_cls.json"), str(CONFIGS / "joint_grading.json"),
               str(CONFIGS / "cpu_demo.json"), str(tiny)]
    result = run_bundle(tmp_path, configs, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    stage = "finetune_grading_random_full_f1.0_s0"
    assert (tmp_path / "models" / stage / "best.pt").is_file()
    assert "val_joint_accuracy" in result.stdout + result.stderr
    result = run_bundle(tmp_path, configs[:2] + [str(CONFIGS / "evaluate.json")] + configs[2:], timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    evaluation = tmp_path / "logs" / stage / "evaluation"
    summary = json.loads((evaluation / "summary.json").read_text())
    with open(evaluation / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert summary["cases"] == len(rows) == len(TESTING_GRADES)
    assert sorted((int(r["dr_grade"]), int(r["dme_grade"])) for r in rows) == sorted(TESTING_GRADES)
    both = [int(r["dr_predicted"]) == int(r["dr_grade"]) and int(r["dme_predicted"]) == int(r["dme_grade"])
            for r in rows]
    assert [int(r["both_correct"]) for r in rows] == [int(b) for b in both]
    assert summary["joint_accuracy"] == pytest.approx(np.mean(both))
    assert summary["joint_accuracy"] <= min(summary["dr_accuracy"], summary["dme_accuracy"])
