"""`mri-ssl demo METHOD`: the CLI shape (the 3-D demo stays the default), each method demo's grid, tables and
figures, with the bundle stages faked (fast) and once through the real bundle on a tiny grid (slow)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mri_ssl.cli import build_parser, main
from mri_ssl.experiments import expand_runs, load_grid
from mri_ssl.experiments.method_figures import read_confusion_matrix
from mri_ssl.method_demos import METHOD_DEMOS, load_method_grid

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["T1", "T2", "Cine", "LGE", "Other"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_without_a_method_is_the_3d_demo_with_unchanged_defaults():
    args = build_parser().parse_args(["demo"])
    assert args.method == "brain"
    assert (args.out, args.resolution_mm, args.random_protocols, args.seed, args.seeds) == ("demo_out", 1.0, 3, 0, [0])
    assert not args.fused and not args.simulation_only and args.grid is None
    cardiac = build_parser().parse_args(["demo", "cardiac", "--seeds", "0", "1", "2", "--out", "x"])
    assert (cardiac.method, cardiac.seeds, cardiac.out) == ("cardiac", [0, 1, 2], "x")
    assert build_parser().parse_args(["demo", "--out", "y", "cardiac"]).method == "cardiac"


def test_demo_rejects_an_unknown_method_and_help_names_every_method(capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["demo", "knee"])
    assert stopped.value.code == 2 and "invalid choice: 'knee'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for method in ["brain", *METHOD_DEMOS]:
        assert method in text
    assert "mri-ssl demo cardiac" in text


def test_a_method_demo_refuses_the_3d_simulation_options(tmp_path, capsys):
    assert main(["demo", "cardiac", "--out", str(tmp_path / "o"), "--resolution-mm", "2"]) == 2
    error = capsys.readouterr().err
    assert "--resolution-mm" in error and "mri-ssl demo cardiac" in error
    assert not (tmp_path / "o").exists()  # refused before any work


def test_every_method_grid_loads_and_pretrains_with_its_probe():
    for method, demo in METHOD_DEMOS.items():
        grid = load_grid(REPO / "experiments" / demo.grid_file)
        assert grid.seeds == (0, 1, 2) and "random" in grid.modes and grid.downstream
        assert load_method_grid(method, seeds=[1]).seeds == (1,)
    cardiac = load_method_grid("cardiac")
    assert cardiac.pretraining.probe == "simsiam/probe.json"
    assert cardiac.pretraining.encoder == "simsiam/encoder_best.pt"
    fundus = load_method_grid("fundus")  # the coarse-to-fine pipeline in one pretraining run, in order
    stages = [stage for stage, _ in expand_runs(fundus)[0].stages()]
    assert stages == ["train", "stage1_evaluate", "stage1_overlays", "heatmaps", "pretrain"]
    assert load_method_grid("cmr").pretraining is None  # the CLIP training is the method: untrained vs trained rows


def _fake_probe(seed: int, epochs: int = 3) -> dict:
    start = 0.79 + 0.01 * seed
    history = [{"iteration": 7 * epoch, "epoch": epoch, "auc": start + 0.05 * epoch, "accuracy": 0.5 + 0.1 * epoch,
                "majority_rate": 0.43, "spread": 0.05, "spread_healthy": 0.0625, "score": start + 0.05 * epoch,
                "n_fit": 509, "n": 70, **({"train_loss": -0.3 * epoch} if epoch else {})}
               for epoch in range(epochs + 1)]
    return {"random_init": {**history[0], "auc": 0.78}, "history": history}


def _fake_confusion(mode: str, seed: int, images: int = 140) -> np.ndarray:
    rng = np.random.default_rng(seed + 10 * len(mode))
    counts = rng.multinomial(images, np.ones(25) / 25).reshape(5, 5)
    return counts


@pytest.fixture
def fake_bundle_stages(monkeypatch):
    """The bundle stages replaced by a function writing what the cardiac bundle writes: the pretraining run's
    `logs/simsiam/probe.json`, the evaluation's `logs/evaluation/metrics.json` (a failing evaluation for the modes in
    `fail`)."""
    from mri_ssl.experiments import runner

    fail = set()

    def fake_stage(command, log_path, on_epoch, timeout_s, environment=None):
        folder = log_path.parent
        overrides = json.loads((folder / "overrides.json").read_text())
        seed = overrides["seed"]
        if "pretrained" not in overrides:  # a pretraining run
            (folder / "logs" / "simsiam").mkdir(parents=True)
            (folder / "logs" / "simsiam" / "probe.json").write_text(json.dumps(_fake_probe(seed)))
        elif log_path.name == "evaluate.log":
            mode = folder.name.split("-")[1]
            if mode in fail:
                log_path.write_text("RuntimeError: the evaluation broke\n")
                return 1, 1.0
            counts = _fake_confusion(mode, seed)
            metrics = {"images": int(counts.sum()), "auc": {c: 0.9 for c in CLASSES}, "class_names": CLASSES,
                       "mean_auc": 0.9 - 0.01 * seed, "accuracy": float(np.trace(counts) / counts.sum()),
                       "confusion_matrix": counts.tolist()}
            (folder / "logs" / "evaluation").mkdir(parents=True)
            (folder / "logs" / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
        log_path.write_text("ok\n")
        return 0, 1.0

    monkeypatch.setattr(runner, "_run_stage", fake_stage)
    return fail


def _table_rows(text: str) -> list[list[str]]:
    """The data rows of the Markdown tables in ``text``: their cells, without the row title."""
    return [[cell.strip() for cell in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("|  |") and not line.startswith("| mode |")]


def test_cardiac_demo_writes_tables_curves_and_confusion_matrices(tmp_path, capsys, fake_bundle_stages):
    out = tmp_path / "cardiac_out"
    assert main(["demo", "cardiac", "--out", str(out), "--quiet", "--seeds", "0", "1", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    experiment = summary["experiment"]
    grid = load_method_grid("cardiac", seeds=[0, 1])
    assert experiment["runs"] == experiment["finished"] == 2 + len(grid.columns) * len(grid.label_fractions) * 2
    assert sorted(experiment["figures"]) == ["figures/learning_curves.png", "figures/sequence_confusion.png"]
    for figure in experiment["figures"]:
        png = (out / figure).read_bytes()
        assert png[:8] == PNG and len(png) > 10_000, figure
    # The printed tables: the downstream score at each label fraction (mean ± std over the two seeds), then the probe.
    assert "sequence: mean_auc (higher is better), 100% of labels, seeds [0, 1]" in printed
    assert "sequence: mean_auc (higher is better), 10% of labels" in printed
    assert "Linear probe, SimSiam ViT" in printed and "Supervised from scratch" in printed
    assert re.search(r"all test cases +0\.895 ± 0\.007", printed)
    probe = [line for line in printed.splitlines() if line.startswith("| SimSiam |")]
    assert [line.split("|")[2].strip() for line in probe] == ["step 0", "end", "random init"]
    assert probe[0].split("|")[4].strip() == "0.795 ± 0.007"  # step-0 AUC of the two seeds, 0.79 and 0.80
    assert probe[1].split("|")[4].strip() == "0.945 ± 0.007" and probe[2].split("|")[4].strip() == "0.780 ± 0.000"
    assert "peak memory" in printed and "montage" not in printed
    rows = _table_rows((out / "results.md").read_text()) + _table_rows(printed)
    assert rows and all(cell and "nan" not in cell for row in rows for cell in row)


def test_a_failed_evaluation_is_named_in_its_cell_never_an_empty_one(tmp_path, capsys, fake_bundle_stages):
    fake_bundle_stages.add("simsiam_linear")
    out = tmp_path / "cardiac_out"
    assert main(["demo", "cardiac", "--out", str(out), "--quiet", "--jobs", "1"]) == 1
    printed = capsys.readouterr().out
    assert "INCOMPLETE RESULTS" in printed and "sequence-simsiam_linear-frac1-seed0" in printed.splitlines()[-4]
    markdown = (out / "results.md").read_text()
    rows = _table_rows(markdown)
    assert all(cell for row in rows for cell in row) and any("failed" in row for row in rows)
    assert (out / "figures" / "sequence_confusion.png").stat().st_size > 10_000  # the other columns still drawn


def run_tiny_demo(method: str, tmp_path, capsys, tiny: dict, jobs: int, edit=None) -> tuple:
    """``mri-ssl demo METHOD`` through the real bundles on the method's grid with the ``tiny`` overrides (and any
    ``edit`` of the grid dict); asserts exit 0, returns the output folder and the printed text."""
    content = yaml.safe_load((REPO / "experiments" / f"demo_{method}.yaml").read_text())
    content.update(bundles=str(REPO / "bundles"))
    content["overrides"].update(tiny)
    if edit is not None:
        edit(content)
    grid_path = tmp_path / f"demo_{method}_tiny.yaml"
    grid_path.write_text(yaml.safe_dump(content))
    out = tmp_path / "out"
    assert main(["demo", method, "--out", str(out), "--quiet", "--grid", str(grid_path), "--jobs", str(jobs)]) == 0
    return out, capsys.readouterr().out


@pytest.mark.slow
def test_cardiac_demo_through_the_bundle_on_a_tiny_grid(tmp_path, capsys):
    tiny = {"demo_subjects": 6, "demo_slices": 1, "demo_cine_frames": 2, "hidden_size": 32, "mlp_dim": 64,
            "num_layers": 1, "num_heads": 2, "projection_dim": 32, "predictor_hidden": 8, "batch_size": 4,
            "pretrain_batch_size": 4, "pretrain_epochs": 2, "epoch_length": 2}

    def shorter(grid):
        grid.update(label_fractions=[1.0])
        grid["downstream"][0]["overrides"].update(num_epochs=2)

    out, printed = run_tiny_demo("cardiac", tmp_path, capsys, tiny, jobs=2, edit=shorter)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"]["finished"] == 1 + 4 and 0 < summary["peak_memory_gb"] < 6
    assert "| SimSiam | step 0 | 1 |" in printed
    for figure in ("learning_curves.png", "sequence_confusion.png"):
        assert (out / "figures" / figure).read_bytes()[:8] == PNG
    # Every classifier's confusion matrix counts each test image once.
    test_images = [e for e in json.loads((out / "data" / "cardiac" / "datalist.json").read_text())["test"]]
    for folder in (out / "runs").glob("sequence-*"):
        counts, names, _ = read_confusion_matrix(folder)
        assert names == CLASSES and counts.sum() == len(test_images)
    rows = _table_rows((out / "results.md").read_text())
    assert rows and all(cell and "nan" not in cell for row in rows for cell in row)


# ----------------------------------------------------------------------------------------------------------------
# cmr


def test_retrieval_examples_rank_studies_by_their_similarity_to_a_report(tmp_path):
    from mri_ssl.experiments.method_figures import retrieval_examples

    rng = np.random.default_rng(0)
    text = rng.normal(size=(6, 4))
    video = text + 0.1 * rng.normal(size=(6, 4))  # each study nearest its own report
    video[3] = text[0]  # ... except that study 3 matches report 0 exactly
    path = tmp_path / "embeddings.npz"
    ids = [f"s{i}" for i in range(6)]
    np.savez(path, study_ids=np.array(ids), video=video, reports=np.array([f"report {i}" for i in range(6)]),
             text=text)
    labels = ["normal", "dilated", "normal"]
    manifest = {"studies": [{"study_id": s, "label": labels[i % 3]} for i, s in enumerate(ids)]}
    examples = retrieval_examples(path, manifest, reports=3, top_k=5)
    assert [e["study_id"] for e in examples] == ["s0", "s1"]  # the first study of each label
    first = examples[0]
    scores = video @ text[0]
    assert [hit["study_id"] for hit in first["top"]] == [ids[j] for j in np.argsort(-scores)[:5]]
    assert [hit["score"] for hit in first["top"]] == pytest.approx(sorted(scores, reverse=True)[:5])
    assert first["rank_of_own_study"] == 1 + int(np.sum(scores > scores[0]))
    assert examples[1]["rank_of_own_study"] == 1 and examples[1]["top"][0]["study_id"] == "s1"


@pytest.fixture
def fake_cmr_stages(monkeypatch):
    """The cmr bundle's stages faked: the phantom manifest (written for real, tiny), the training history, the
    evaluation's metrics.json and the inference's embeddings.npz."""
    from mri_ssl.data.cardiac.cmr_studies import write_cmr_studies
    from mri_ssl.experiments import runner

    def fake_stage(command, log_path, on_epoch, timeout_s, environment=None):
        folder = log_path.parent
        overrides = json.loads((folder / "overrides.json").read_text())
        seed, data = overrides["seed"], Path(overrides["demo_data_dir"])
        if log_path.name == "train.log":
            if not (data / "manifest.json").is_file():
                write_cmr_studies(data, studies=10, cine_frames=2, lge_slices=2, matrix=24, progress=False)
            history = [{"epoch": e, "train_loss": 2.4 - 0.3 * e, "val_loss": 2.5 - 0.1 * e, "logit_scale": 14.0 + e}
                       for e in range(1, 4)]
            (folder / "models" / "run").mkdir(parents=True)
            (folder / "models" / "run" / "history.json").write_text(json.dumps({"history": history}))
        elif log_path.name == "evaluate.log":
            rows = [{"model": "zero-shot (untrained)", "RSUM": 250.0 + seed, "t2v_R@5": 40.0, "v2t_R@5": 41.0,
                     "t2v_MdR": 6.0, "num_queries": 2},
                    {"model": "frames8_cine_lge_seed0", "RSUM": 300.0 + 10 * seed, "t2v_R@5": 60.0, "v2t_R@5": 61.0,
                     "t2v_MdR": 3.0, "num_queries": 2}]
            probes = [{"model": rows[0]["model"], "macro_auc": 0.5, "accuracy": 0.3},
                      {"model": rows[1]["model"], "macro_auc": 0.7, "accuracy": 0.6}]
            (folder / "logs" / "evaluation").mkdir(parents=True)
            (folder / "logs" / "evaluation" / "metrics.json").write_text(
                json.dumps({"retrieval": rows, "linear_probe": probes}))
        else:
            manifest = json.loads((data / "manifest.json").read_text())
            test = manifest["test"]
            rng = np.random.default_rng(seed)
            text = rng.normal(size=(len(test), 8))
            reports = {s["study_id"]: s["report"] for s in manifest["studies"]}
            (folder / "predictions").mkdir()
            np.savez(folder / "predictions" / "embeddings.npz", study_ids=np.array(test), video=text,
                     reports=np.array([reports[s] for s in test]), text=text)
        log_path.write_text("ok\n")
        return 0, 1.0

    monkeypatch.setattr(runner, "_run_stage", fake_stage)


def test_cmr_demo_writes_the_untrained_and_trained_table_history_and_examples(tmp_path, capsys, fake_cmr_stages):
    out = tmp_path / "cmr_out"
    assert main(["demo", "cmr", "--out", str(out), "--quiet", "--seeds", "0", "1", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    experiment = json.loads((out / "summary.json").read_text())["experiment"]
    assert experiment["runs"] == experiment["finished"] == 2
    assert sorted(experiment["figures"]) == ["figures/retrieval_examples.png", "figures/retrieval_training.png"]
    for figure in experiment["figures"]:
        assert (out / figure).read_bytes()[:8] == PNG and (out / figure).stat().st_size > 10_000
    assert "retrieval: RSUM (higher is better), 100% of labels, seeds [0, 1]" in printed
    assert re.search(r"trained +305\.00 ± 7\.07", printed) and re.search(r"untrained \(step 0\) +250\.50 ± 0\.71",
                                                                         printed)
    assert re.search(r"trained +0\.700 ± 0\.000", printed.split("probe_macro_auc")[1])
    examples = json.loads((out / "figures" / "retrieval_examples.json").read_text())["examples"]
    test_ids = json.loads((out / "data" / "cmr" / "manifest.json").read_text())["test"]
    assert examples and all(len(e["top"]) == min(5, len(test_ids)) for e in examples)
    assert all(e["rank_of_own_study"] == 1 for e in examples)  # video == text embeddings in the fake
    rows = _table_rows((out / "results.md").read_text())
    assert rows and all(cell and "nan" not in cell for row in rows for cell in row)


def test_cmr_table_names_a_missing_evaluation_file(tmp_path, capsys, monkeypatch):
    from mri_ssl.experiments import runner

    def fake_stage(command, log_path, on_epoch, timeout_s, environment=None):
        log_path.write_text("ok\n")
        return 0, 1.0

    monkeypatch.setattr(runner, "_run_stage", fake_stage)
    out = tmp_path / "cmr_out"
    assert main(["demo", "cmr", "--out", str(out), "--quiet", "--jobs", "1"]) == 1
    printed = capsys.readouterr().out
    assert "first failure: retrieval-random-frac1-seed0: the evaluation wrote no readable" in printed
    assert str(Path("logs") / "evaluation" / "summary.json") in printed
    rows = _table_rows((out / "results.md").read_text())
    assert all(cell for row in rows for cell in row)
    assert "metrics.json" in (out / "results.md").read_text()


@pytest.mark.slow
def test_cmr_demo_through_the_bundle_on_a_tiny_grid(tmp_path, capsys):
    tiny = {"demo_studies": 12, "demo_cine_frames": 4, "demo_lge_slices": 2, "image_size": 32, "cnn_features": [4, 8],
            "text_width": 16, "text_layers": 1, "text_heads": 2, "embed_dim": 16, "num_frames": 4, "batch_size": 4,
            "max_epochs": 2}
    out, printed = run_tiny_demo("cmr", tmp_path, capsys, tiny, jobs=1)
    assert "untrained (step 0)" in printed and "retrieval: RSUM" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["experiment"]["figures"]) == ["figures/retrieval_examples.png",
                                                        "figures/retrieval_training.png"]
    examples = json.loads((out / "figures" / "retrieval_examples.json").read_text())["examples"]
    test_ids = set(json.loads((out / "data" / "cmr" / "manifest.json").read_text())["test"])
    assert examples and all({hit["study_id"] for hit in e["top"]} <= test_ids for e in examples)
    rows = _table_rows((out / "results.md").read_text())
    assert rows and all(cell and "nan" not in cell for row in rows for cell in row)


# ----------------------------------------------------------------------------------------------------------------
# fundus


@pytest.fixture
def fake_fundus_stages(monkeypatch):
    """The fundus bundle's stages faked: the demo data (written for real, small), stage 1's CAM overlays and
    evaluation in the pretraining run, and a flat evaluation summary per transfer run."""
    from PIL import Image

    from mri_ssl.data.photo.demo import write_fundus_demo
    from mri_ssl.experiments import runner

    def fake_stage(command, log_path, on_epoch, timeout_s, environment=None):
        folder = log_path.parent
        overrides = json.loads((folder / "overrides.json").read_text())
        seed, data = overrides["seed"], Path(overrides["demo_data_dir"])
        if not (data / "datalist.json").is_file():
            write_fundus_demo(data, images=10, validation_images=2, test_images=6, size=64)
        test = json.loads((data / "datalist.json").read_text())["test"]
        if log_path.name == "stage1_overlays.log":
            (folder / "predictions" / "stage1").mkdir(parents=True)
            for entry in test:
                picture = np.asarray(Image.open(data / entry["image"]).convert("RGB"))
                name = f"{Path(entry['image']).stem}_cam.png"
                Image.fromarray(picture).save(folder / "predictions" / "stage1" / name)
        elif log_path.name == "stage1_evaluate.log":
            evaluation = folder / "logs" / "stage1" / "evaluation"
            evaluation.mkdir(parents=True)
            (evaluation / "summary.json").write_text(json.dumps({"cases": 6, "roc_auc": 0.9, "pointing_game": 2 / 3,
                                                                 "cam_iou": 0.1}))
            lines = ["image,abnormal,p_abnormal,pointing_hit,cam_iou"] + [
                f"{Path(e['image']).name},{e['abnormal']},0.5,{int(i % 4 != 3) if e['abnormal'] else ''},0.1"
                for i, e in enumerate(test)]
            (evaluation / "per_case.csv").write_text("\n".join(lines) + "\n")
        elif log_path.name == "pretrain.log":  # the probe history: whole-image and lesion-patch probe (ProbeSet)
            probe = _fake_probe(seed)
            for record in probe["history"] + [probe["random_init"]]:
                lesion_auc = 0.5 if record is probe["random_init"] else 0.6 + 0.1 * record["epoch"] + 0.01 * seed
                record.update({"lesion_auc": lesion_auc, "lesion_accuracy": 0.5, "lesion_majority_rate": 0.52,
                               "lesion_n": 90, "lesion_n_fit": 96, "lesion_crop_size": 32, "score": lesion_auc})
            (folder / "logs" / "pretrain_camcontrast").mkdir(parents=True, exist_ok=True)
            (folder / "logs" / "pretrain_camcontrast" / "probe.json").write_text(json.dumps(probe))
        elif log_path.name == "evaluate.log":
            pretrained = overrides["pretrained"]
            summary = {"cases": 6, "roc_auc": 0.7 + 0.1 * pretrained + 0.01 * seed, "f1": 0.5, "accuracy": 0.6,
                       "dice_mean": 0.2 + 0.05 * pretrained, "dice_pooled": 0.3, "auc_pr": 0.25}
            (folder / "logs" / "evaluation").mkdir(parents=True)
            (folder / "logs" / "evaluation" / "summary.json").write_text(json.dumps(summary))
        log_path.write_text("ok\n")
        return 0, 1.0

    monkeypatch.setattr(runner, "_run_stage", fake_stage)


def test_fundus_demo_runs_the_whole_pipeline_and_draws_cams_with_the_placed_lesions(tmp_path, capsys,
                                                                                    fake_fundus_stages):
    out = tmp_path / "fundus_out"
    assert main(["demo", "fundus", "--out", str(out), "--quiet", "--seeds", "0", "1", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    experiment = json.loads((out / "summary.json").read_text())["experiment"]
    assert experiment["runs"] == experiment["finished"] == 2 + 2 * 2 * 2
    assert experiment["figures"] == ["figures/learning_curves.png", "figures/cam_overlays.png"]
    for figure in experiment["figures"]:
        png = (out / figure).read_bytes()
        assert png[:8] == PNG and len(png) > 10_000, figure
    # Every stage of the coarse-to-fine pipeline ran, in order, in the pretraining run's folder.
    pretrain = next((out / "runs").glob("pretrain-camcontrast-seed0-*"))
    assert sorted(p.name for p in pretrain.glob("*.log")) == sorted(
        f"{stage}.log" for stage in ("train", "stage1_evaluate", "stage1_overlays", "heatmaps", "pretrain"))
    assert re.search(r"classification: roc_auc .*\n.*\nall test cases +0\.705 ± 0\.007 +0\.805 ± 0\.007", printed)
    assert re.search(r"lesions: dice_mean .*\n.*\nall test cases +0\.200 ± 0\.000 +0\.250 ± 0\.000", printed)
    rows = _table_rows((out / "results.md").read_text())
    assert rows and all(cell and "nan" not in cell for row in rows for cell in row)
    # The probe table: both probes at step 0, the end and random init (mean ± std over the two seeds), in print and
    # results.md; the lesion-patch AUC of seeds 0 and 1 at the end (epoch 3) is 0.90 and 0.91.
    for text in (printed, (out / "results.md").read_text()):
        assert "lesion-patch AUC" in text and "96 training and 90 validation crops of 32 px" in text
        probe = [line.split("|") for line in text.splitlines() if line.startswith("| CAMContrast |")]
        assert [row[2].strip() for row in probe] == ["step 0", "end", "random init"]
        assert [row[6].strip() for row in probe] == ["0.605 ± 0.007", "0.905 ± 0.007", "0.500 ± 0.000"]
    # Stage 1's CAM localisation, from each pretraining run's stage-1 evaluation (2/3 in the fake, both seeds).
    assert "| 2 of 2 | 0.900 ± 0.000 | 0.667 ± 0.000 | 0.100 ± 0.000 |" in printed


@pytest.mark.slow
def test_fundus_demo_through_the_bundle_on_a_tiny_grid(tmp_path, capsys):
    tiny = {"demo_images": 12, "demo_validation_images": 4, "demo_test_images": 4, "demo_size": 64, "image_size": 64,
            "features": [4, 8, 8, 8, 8], "heatmap_features": [4, 8, 8], "projection_hidden": 16,
            "decoder_features": [8, 8, 8, 8, 8, 8], "batch_size": 4, "num_epochs": 1,
            "epoch_length": None}  # one pass over the tiny splits, not cpu_demo.json's 15 steps an epoch
    out, printed = run_tiny_demo("fundus", tmp_path, capsys, tiny, jobs=2)
    assert "classification: roc_auc" in printed and "lesions: dice_mean" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert "figures/cam_overlays.png" in summary["experiment"]["figures"]
    rows = _table_rows((out / "results.md").read_text())
    assert rows and all(cell and "nan" not in cell for row in rows for cell in row)
