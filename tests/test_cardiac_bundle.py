"""The cardiac_sequence_classification bundle end to end through `python -m monai.bundle run`, and its demo data."""

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigWorkflow

from bundle_runner import bundle_dir, run_bundle
from dicom_writer import write_series
from mri_ssl.data.cardiac.demo import CARDIAC_DEMO, write_cardiac_demo
from mri_ssl.data.cardiac.sequence_labels import BRAIN_SEQUENCE_MAP, classification_entries
from mri_ssl.data.datalist import resolve_datalist
from mri_ssl.engines import load_checkpoint
from mri_ssl.errors import InputError
from mri_ssl.networks import SequenceClassifier, load_vit_encoder
from mri_ssl.physics.cardiac import SEQUENCE_CLASSES

BUNDLE = bundle_dir("cardiac_sequence_classification")
CONFIGS = BUNDLE / "configs"
TINY = {
    "demo_subjects": 5, "demo_slices": 1, "demo_cine_frames": 2,
    "hidden_size": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2,
    "projection_dim": 32, "predictor_hidden": 8,
    "batch_size": 4, "num_epochs": 2, "pretrain_batch_size": 4, "pretrain_epochs": 2, "epoch_length": 2,
    "num_workers": 0, "progress_bar": False,
}


@pytest.fixture(scope="module")
def demo_data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cardiac_demo")
    resolve_datalist("", folder, CARDIAC_DEMO, subjects=TINY["demo_subjects"], slices=TINY["demo_slices"],
                     cine_frames=TINY["demo_cine_frames"], progress=False)
    return folder


def test_demo_data_files_splits_and_classes(demo_data_dir):
    datalist = json.loads((demo_data_dir / "datalist.json").read_text())
    subjects = {split: {e["subject"] for e in datalist[split]} for split in ("training", "validation", "test")}
    assert sum(len(s) for s in subjects.values()) == 5
    assert not (subjects["training"] & subjects["test"]) and not (subjects["training"] & subjects["validation"])
    entries = classification_entries(demo_data_dir / "datalist.json", "training")
    assert {e["label"] for e in entries} == set(range(len(SEQUENCE_CLASSES)))
    assert all(SEQUENCE_CLASSES[e["label"]] == e["sequence"] for e in entries)
    # One series per class per subject; the cine has two frames, the others one image (one short-axis slice).
    per_subject = [e for e in datalist["training"] if e["subject"] == sorted(subjects["training"])[0]]
    counts = {c: sum(e["sequence"] == c for e in per_subject) for c in SEQUENCE_CLASSES}
    assert counts == {"T1": 1, "T2": 1, "Cine": 2, "LGE": 1, "Other": 1}
    image = nib.load(entries[0]["image"])
    assert image.shape == (84, 84) and image.get_fdata().max() > 0.5
    assert (demo_data_dir / "montage.png").stat().st_size > 1000
    # Reused, not rewritten, while the parameters match.
    stamp = (demo_data_dir / "datalist.json").stat().st_mtime_ns
    resolve_datalist("", demo_data_dir, CARDIAC_DEMO, subjects=5, slices=1, cine_frames=2, progress=False)
    assert (demo_data_dir / "datalist.json").stat().st_mtime_ns == stamp


def test_demo_writer_and_datalist_reject_bad_input(tmp_path):
    with pytest.raises(InputError, match="subjects"):
        write_cardiac_demo(tmp_path, subjects=2)
    with pytest.raises(InputError, match="datalist not found"):
        resolve_datalist(tmp_path / "nothing.json", tmp_path, CARDIAC_DEMO)


def test_brain_manifest_sequences_map_to_classes(tmp_path):
    manifest = {"test": [{"image": "a.nii.gz", "subject": "s1", "sequence": "T1w"},
                         {"image": "b.nii.gz", "subject": "s1", "sequence": "FLAIR"},
                         {"image": "c.nii.gz", "subject": "s2", "sequence": "T2w"}]}
    path = tmp_path / "brain.json"
    path.write_text(json.dumps(manifest))
    entries = classification_entries(path, "test", sequence_map=BRAIN_SEQUENCE_MAP)
    assert [(Path(e["image"]).name, e["label"]) for e in entries] == [("a.nii.gz", 0), ("c.nii.gz", 1)]


def _config(folder: Path, demo_data_dir: Path, **overrides) -> str:
    path = folder / f"tiny_{len(list(folder.glob('tiny_*')))}.json"
    path.write_text(json.dumps({**TINY, "demo_data_dir": str(demo_data_dir), **overrides}))
    return str(path)


@pytest.mark.slow
def test_pretrain_finetune_probe_and_evaluate_through_monai_bundle_run(tmp_path, demo_data_dir):
    cpu = str(CONFIGS / "cpu_demo.json")
    tiny = _config(tmp_path, demo_data_dir)
    result = run_bundle(tmp_path, [str(CONFIGS / "pretrain.json"), cpu, tiny])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "collapse indicator" in result.stdout + result.stderr
    simsiam = tmp_path / "models" / "simsiam"
    assert {"latest.pt", "best.pt", "final.pt", "encoder_best.pt", "encoder_final.pt"} <= \
        {p.name for p in simsiam.iterdir()}
    encoder = load_vit_encoder(simsiam / "encoder_best.pt")  # what train.json fine-tunes and probes
    assert encoder(torch.rand(1, 1, 84, 84)).shape == (1, TINY["hidden_size"])
    # The linear probe on frozen features ran at step 0 and after every epoch, and chose best.pt.
    probe = json.loads((tmp_path / "logs" / "simsiam" / "probe.json").read_text())
    assert [h["epoch"] for h in probe["history"]] == list(range(TINY["pretrain_epochs"] + 1))
    assert probe["history"][0]["iteration"] == 0 and 0.0 <= probe["random_init"]["auc"] <= 1.0
    assert load_checkpoint(simsiam / "best.pt")["best_metric"] == max(h["score"] for h in probe["history"][1:])
    assert "linear probe on frozen features" in result.stdout + result.stderr

    # Fine-tune from the SimSiam encoder, then evaluate on the test split.
    result = run_bundle(tmp_path, [str(CONFIGS / "train.json"), cpu, tiny])
    assert result.returncode == 0, result.stderr[-3000:]
    best = load_checkpoint(tmp_path / "models" / "best.pt")
    assert best["best_metric"] >= 0.0
    result = run_bundle(tmp_path, [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json"), cpu, tiny])
    assert result.returncode == 0, result.stderr[-3000:]
    report = tmp_path / "logs" / "evaluation"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["auc"]) == set(SEQUENCE_CLASSES) and 0.0 <= metrics["mean_auc"] <= 1.0
    assert (report / "confusion_matrix.png").stat().st_size > 1000
    rows = (report / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + metrics["images"] and metrics["images"] > 0
    assert sum(sum(row) for row in metrics["confusion_matrix"]) == metrics["images"]

    # Inference on a DICOM folder (in-process): one CSV row per series, probabilities in [0, 1].
    dicom = tmp_path / "dicom"
    write_series(dicom, "P1", "cine", positions=5, phases=2, description="cine SSFP")
    write_series(dicom, "P1", "lge", positions=3, description="PSIR LGE")
    (dicom / "broken.dcm").write_bytes(b"DICM" * 10)
    output = tmp_path / "series.csv"
    _run_in_process(tmp_path, [CONFIGS / "train.json", CONFIGS / "inference.json", CONFIGS / "classify_dicom.json",
                               cpu, tiny], input_dir=str(dicom), output_file=str(output),
                    checkpoint=str(tmp_path / "models" / "best.pt"))
    rows = output.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("patient,series_uid")
    assert {row.split(",")[4] for row in rows[1:]} == {"Cine", "LGE"}
    assert all(0.0 <= float(v) <= 1.0 for row in rows[1:] for v in row.split(",")[6:])
    assert "broken.dcm" in Path(str(output) + ".skipped.txt").read_text()

    # Linear probe (in-process, same configs): the probe's backbone is exactly the SimSiam encoder the
    # representation probe chose (encoder_best.pt).
    _run_in_process(tmp_path, [CONFIGS / "train.json", CONFIGS / "linear_probe.json", cpu, tiny])
    probe = load_checkpoint(tmp_path / "models" / "linear_probe" / "final.pt")["network"]
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(probe[f"encoder.{key}"], value)
    # Supervised-from-scratch baseline: same configs, no encoder file.
    _run_in_process(tmp_path, [CONFIGS / "train.json", CONFIGS / "supervised.json", cpu, tiny])
    supervised = load_checkpoint(tmp_path / "models" / "supervised" / "final.pt")["network"]
    assert not torch.equal(supervised["encoder.vit.norm.weight"], probe["encoder.vit.norm.weight"])


def _run_in_process(root: Path, configs, **overrides) -> None:
    workflow = ConfigWorkflow(config_file=[str(c) for c in configs], workflow_type="train", bundle_root=str(root),
                              **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_a_missing_encoder_file_is_named(tmp_path):
    with pytest.raises(InputError, match="encoder_final.pt"):
        SequenceClassifier(encoder=str(tmp_path / "models" / "simsiam" / "encoder_final.pt"))


def test_a_truncated_image_in_the_datalist_is_named_before_training(tmp_path):
    import gzip

    from mri_ssl.io.images import DataIntegrityError
    from mri_ssl.data.cardiac.sequence_labels import check_classification_datalist

    datalist = write_cardiac_demo(tmp_path / "demo", subjects=4, seed=0)
    check_classification_datalist(datalist, ["training"], labelled_only=False)
    entry = json.loads(Path(datalist).read_text())["training"][0]
    image = Path(datalist).parent / entry["image"]
    data = image.read_bytes()
    assert gzip.decompress(data)  # a complete file before the cut
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataIntegrityError, match=entry["image"].split("/")[-1]):
        check_classification_datalist(datalist, ["training"], labelled_only=False)


def test_a_study_in_two_splits_is_refused(tmp_path):
    from mri_ssl.data.cardiac.sequence_labels import check_classification_datalist

    datalist = write_cardiac_demo(tmp_path / "demo", subjects=4, seed=0)
    content = json.loads(Path(datalist).read_text())
    content["validation"].append(dict(content["training"][0]))
    Path(datalist).write_text(json.dumps(content))
    with pytest.raises(InputError, match=content["training"][0]["subject"]):
        check_classification_datalist(datalist, ["training"], labelled_only=False)
