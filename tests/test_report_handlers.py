"""The evaluation report handlers share one event wiring (``EvaluationReport``): rows emptied when an evaluator
starts, collected every iteration, written when it completes; each row names the file its image came from."""

import csv
import json

import numpy as np
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from mri_ssl.engines.classification_report import ClassificationReport
from mri_ssl.engines.reports import DenoisingReport


def image(name: str) -> MetaTensor:
    return MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": name})


def test_classification_report_restarts_with_each_run_and_names_the_files(tmp_path):
    classes = ["T1", "T2"]

    def step(engine, batch):  # decollated output: one dict per image
        return [{"pred": torch.tensor(p), "label": torch.tensor(lab), "image": image(name), "subject": name[:2]}
                for name, p, lab in batch]

    engine = Engine(step)
    report = ClassificationReport(tmp_path, classes)
    report.attach(engine)
    engine.run([[("s1_a.nii.gz", [0.9, 0.1], [1, 0]), ("s2_b.nii.gz", [0.2, 0.8], [0, 1])]], max_epochs=1)
    second = [[("s3_c.nii.gz", [0.7, 0.3], [0, 1])], [("s4_d.nii.gz", [0.6, 0.4], [1, 0])]]
    engine.run(second, max_epochs=1)
    assert [row["file"] for row in report.rows] == ["s3_c.nii.gz", "s4_d.nii.gz"]  # the first run's rows are gone
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["accuracy"] == 0.5  # s4 right, s3 wrong
    assert engine.state.metrics["accuracy"] == 0.5
    with open(tmp_path / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["file"], r["subject"], r["true_class"], r["predicted_class"]) for r in rows] == [
        ("s3_c.nii.gz", "s3", "T2", "T1"), ("s4_d.nii.gz", "s4", "T1", "T1")]


def test_case_report_restarts_with_each_run_and_names_the_files(tmp_path):
    def step(engine, batch):
        return [{"pred": torch.zeros(1, 4, 4, 4)} for _ in batch]

    engine = Engine(step)
    report = DenoisingReport(tmp_path)
    report.attach(engine)
    clean = torch.linspace(0.0, 1.0, 64).reshape(1, 4, 4, 4)
    noisy = [{"image": MetaTensor(clean + 0.1 * torch.rand(1, 4, 4, 4), meta={"filename_or_obj": f"case{i}.nii.gz"}),
              "clean": clean, "subject": f"s{i}"} for i in range(3)]
    engine.run([noisy[:2]], max_epochs=1)
    engine.run([noisy[2:]], max_epochs=1)
    assert [row["image"] for row in report.rows] == ["case2.nii.gz"] and report.rows[0]["subject"] == "s2"
    assert np.isfinite(report.summary["overall"]["psnr_db"]["mean"])
    assert (tmp_path / "per_case.csv").is_file()
