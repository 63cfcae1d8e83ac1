"""`mri-ssl experiment`: grid parsing and hashing, table maths, and a tiny grid end to end through the bundles."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from mri_ssl.cli import main
from mri_ssl.errors import InputError
from mri_ssl.experiments import collect, expand_runs, load_grid
from mri_ssl.experiments.runner import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, RunResult, error_summary
from mri_ssl.experiments.tables import domain_of, markdown_table

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

TINY_ENCODER = {"features": [4, 8, 8, 8], "dropout": 0.1}
TINY_PRETRAIN = {**TINY_ENCODER, "demo_resolution_mm": 4.0, "demo_subjects": 4, "demo_validation_subjects": 2,
                 "reconstruction_channels": [8, 8, 4], "projection_hidden": 16, "projection_dim": 8,
                 "crop_size": [16, 16, 16], "batch_size": 2, "num_epochs": 1, "epoch_length": 2,
                 "val_interval": 1}  # validate once: the probe picks encoder_best.pt, which the downstream runs load
TINY_DOWNSTREAM = {**TINY_ENCODER, "demo_resolution_mm": 4.0, "demo_subjects": 4, "demo_validation_subjects": 1,
                   "demo_test_subjects": 1, "decoder_features": [8, 8, 8, 4, 4], "patch_size": [16, 16, 16],
                   "batch_size": 2, "num_epochs": 1, "epoch_length": 2, "sw_batch_size": 8, "val_interval": 1}


def write_grid(folder: Path, extra_downstream=(), modes=("random", "seqinv"), **top) -> Path:
    grid = {
        "name": "tiny",
        "bundles": str(BUNDLES),
        "seeds": [0],
        "label_fractions": [1.0],
        "modes": list(modes),
        "overrides": {"progress_bar": False, "num_workers": 0},
        "pretraining": {"bundle": "mri_ssl_pretrain", "configs": ["train.json", "cpu_demo.json"],
                        "overrides": {**TINY_PRETRAIN, "demo_data_dir": "{out_dir}/data/pretrain"}},
        "downstream": [{
            "name": "tissue", "bundle": "mri_segmentation", "configs": ["train.json", "cpu_demo.json"],
            "evaluate": ["evaluate.json"], "metrics": {"dice_mean": "higher", "hd95_mm_mean": "lower"},
            "in_domain": {"site": ["phantom"], "sequence": ["T1w"]},
            "overrides": {**TINY_DOWNSTREAM, "demo_data_dir": "{out_dir}/data/downstream"}}, *extra_downstream],
        **top,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


# ------------------------------------------------------------------------------------------------ grid and hashing


def test_shipped_grids_load_and_expand():
    demo = load_grid(REPO / "experiments" / "demo.yaml")
    runs = expand_runs(demo)
    pretrain = [r for r in runs if r.kind == "pretrain"]
    assert len(pretrain) == 3 * len(demo.seeds)  # base, seqaug, seqinv per seed; random needs none
    downstream = [r for r in runs if r.kind == "downstream"]
    columns = sum(len(demo.columns_for(spec.name)) for spec in demo.downstream)
    assert len(downstream) == columns * len(demo.seeds) * len(demo.label_fractions)
    encoders = {**{mode: mode for mode in demo.modes}, **{v.name: v.encoder for v in demo.variants}}
    assert all((r.upstream is None) == (encoders[r.mode] == "random") for r in downstream)
    assert all(r.upstream.seed == r.seed and r.upstream.mode == encoders[r.mode] for r in downstream if r.upstream)
    paper = load_grid(REPO / "experiments" / "paper_tables.yaml")
    assert paper.label_fractions == (0.01, 0.1, 1.0)
    assert {spec.name for spec in paper.downstream} == {"ixi_tissue", "arc_lesion", "ixi_denoising"}


def test_hash_follows_what_decides_a_result(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    first = {r.label: r.config_hash for r in expand_runs(grid)}
    assert len(set(first.values())) == len(first)
    assert first == {r.label: r.config_hash for r in expand_runs(load_grid(write_grid(tmp_path)))}
    changed = replace(grid, pretraining=replace(grid.pretraining,
                                                overrides={**grid.pretraining.overrides, "num_epochs": 2}))
    second = {r.label: r.config_hash for r in expand_runs(changed)}
    # The pretraining change reaches the downstream run that loads its encoder, not the random-init one.
    assert second["pretrain-seqinv-seed0"] != first["pretrain-seqinv-seed0"]
    assert second["tissue-seqinv-frac1-seed0"] != first["tissue-seqinv-frac1-seed0"]
    assert second["tissue-random-frac1-seed0"] == first["tissue-random-frac1-seed0"]


@pytest.mark.parametrize("change, message", [
    ({"seeds": []}, "seeds"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"modes": ["simclr"]}, "modes"),
    ({"label_fractions": [0.0]}, "label_fractions"),
    ({"overrides": {"seed": 3}}, "experiment runner sets"),
    ({"downstream": [], "modes": ["random"]}, "no dataset"),
    ({"downstream": {"name": "tissue"}}, "must be a list"),
    # A grid's own modes (another bundle's pretraining): names, the mode key, the column titles.
    ({"modes": ["random", "simsiam"]}, "'modes'.*mode_key"),  # not a 3-D view mode, and no mode_key given
    ({"modes": ["random", "SimSiam"], "pretraining": {"mode_key": None}}, "'modes' must be distinct names"),
    ({"modes": ["random", "sim siam"], "pretraining": {"mode_key": None}}, "'modes' must be distinct names"),
    ({"modes": ["random", "a", "b"], "pretraining": {"mode_key": None}}, "same pretraining run.*mode_overrides"),
    ({"modes": ["random", "simsiam"], "pretraining": {"mode_key": 3}}, "'mode_key' must be"),
    ({"modes": ["random", "simsiam"], "pretraining": {"mode_key": "method", "overrides": {"method": "x"}}},
     "experiment runner sets"),
    ({"titles": {"simclr": "SimCLR"}}, "'titles'"),
])
def test_bad_grids_are_named(tmp_path, change, message):
    path = write_grid(tmp_path)
    content = yaml.safe_load(path.read_text())
    change = dict(change)
    content["pretraining"].update(change.pop("pretraining", {}))
    content.update(change)
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError, match=message):
        load_grid(path)


def test_a_grid_without_downstream_runs_only_pretraining(tmp_path):
    path = write_grid(tmp_path)
    content = yaml.safe_load(path.read_text())
    content["downstream"] = []
    path.write_text(yaml.safe_dump(content))
    runs = expand_runs(load_grid(path))
    assert runs and all(run.kind == "pretrain" for run in runs)


def test_missing_config_file_is_named(tmp_path):
    path = write_grid(tmp_path)
    content = yaml.safe_load(path.read_text())
    content["downstream"][0]["evaluate"] = ["evaluat.json"]
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError, match="evaluat.json"):
        load_grid(path)


# ------------------------------------------------------------------------------------------------ table maths


def fake_summary(values_by_group, metric="dice_mean"):
    return {"by_site_sequence": {group: {metric: {"mean": value, "std": 0.0, "n": 1, "n_excluded": 0}}
                                 for group, value in values_by_group.items()}}


def test_cells_are_mean_and_sample_std_over_seeds_and_failures_count(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    grid = replace(grid, seeds=(0, 1, 2))
    runs = [r for r in expand_runs(grid) if r.kind == "downstream"]
    values = {("random", 0): 0.5, ("random", 1): 0.7, ("random", 2): 0.9, ("seqinv", 0): 0.8, ("seqinv", 1): 0.6}
    results = []
    for run in runs:
        value = values.get((run.mode, run.seed))
        if value is None:
            results.append(RunResult(run, STATUS_FAILED, tmp_path, error="boom", reason="train: boom"))
        else:
            results.append(RunResult(run, STATUS_OK, tmp_path, summary=fake_summary(
                {"phantom/T1w": value, "mni152/T1w": value - 0.1})))
    records = {(r["group"], r["mode"]): r for r in collect(grid, results) if r["metric"] == "dice_mean"}
    random_cell = records[("phantom/T1w", "random")]
    assert random_cell["mean"] == pytest.approx(0.7)
    assert random_cell["std"] == pytest.approx(0.2)  # sample std of 0.5, 0.7, 0.9
    seqinv_cell = records[("phantom/T1w", "seqinv")]
    assert (seqinv_cell["n_seeds"], seqinv_cell["n_runs"]) == (2, 3)
    assert seqinv_cell["mean"] == pytest.approx(0.7)
    assert seqinv_cell["std"] == pytest.approx(math.sqrt(0.02))
    assert records[("mni152/T1w", "random")]["domain"] == "out of domain"
    table = markdown_table(collect(grid, results), grid, grid.downstream[0], "dice_mean")
    assert "**0.700 ± 0.200**" in table.split("phantom [T1w]")[1].splitlines()[0] or \
        "**0.700 ± 0.141 (n=2)**" in table  # the two means tie at 0.7; either may be marked best
    assert "(n=2)" in table
    assert table.index("In domain") < table.index("phantom [T1w]") < table.index("Out of domain") < \
        table.index("mni152 [T1w]")


def test_best_and_second_follow_the_metric_direction(tmp_path):
    grid = load_grid(write_grid(tmp_path, modes=("random", "base", "seqinv")))
    runs = [r for r in expand_runs(grid) if r.kind == "downstream"]
    hd95 = {"random": 9.0, "base": 3.0, "seqinv": 5.0}
    results = [RunResult(r, STATUS_OK, tmp_path, summary=fake_summary({"phantom/T1w": hd95[r.mode]}, "hd95_mm_mean"))
               for r in runs]
    table = markdown_table(collect(grid, results), grid, grid.downstream[0], "hd95_mm_mean")
    row = [line for line in table.splitlines() if line.startswith("| phantom [T1w]")][0]
    assert "**3.00 ± 0.00**" in row and "<u>5.00 ± 0.00</u>" in row and "| 9.00 ± 0.00 |" in row


def test_domain_rule():
    rule = {"site": ["phantom"], "sequence": ["T1w"]}
    assert domain_of("phantom/T1w", rule) == "in domain"
    assert domain_of("phantom/FLAIR", rule) == "out of domain"
    assert domain_of("mni152/T1w", rule) == "out of domain"
    assert domain_of("GST/T2w", {"site": ["GST"]}) == "in domain"


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_tiny_grid_runs_skips_finished_runs_and_reports_a_failure(tmp_path, capsys, monkeypatch):
    broken = {"name": "broken", "bundle": "mri_segmentation", "configs": ["train.json", "cpu_demo.json"],
              "evaluate": ["evaluate.json"], "metrics": {"dice_mean": "higher"},
              "overrides": {**TINY_DOWNSTREAM, "dataset_dir": "{out_dir}/no_such_manifest.json"}}
    write_grid(tmp_path / "grid", extra_downstream=[broken])
    # As a user types it: relative grid and output paths, from the folder that holds them.
    monkeypatch.chdir(tmp_path)
    grid_path, out = Path("grid") / "grid.yaml", Path("out")
    assert main(["experiment", str(grid_path), "--out", str(out), "--quiet"]) == 1  # a run failed
    closing = capsys.readouterr().out.strip().splitlines()[-4:]
    assert closing[0].startswith("2 of 5 runs did not finish (2 failed, 0 skipped)")
    assert closing[1].startswith("first failure: broken-random-frac1-seed0: ") and "no_such_manifest" in closing[1]
    assert closing[2].startswith("its log: ") and Path(closing[2].split(": ", 1)[1]).is_file()
    assert closing[3] == f"every run's status: {out / 'runs.csv'}"

    runs = {row["label"]: row for row in _csv_rows(out / "runs.csv")}
    assert {label: row["status"] for label, row in runs.items()} == {
        "pretrain-seqinv-seed0": STATUS_OK, "tissue-random-frac1-seed0": STATUS_OK,
        "tissue-seqinv-frac1-seed0": STATUS_OK, "broken-random-frac1-seed0": STATUS_FAILED,
        "broken-seqinv-frac1-seed0": STATUS_FAILED}
    assert "no_such_manifest.json" in runs["broken-random-frac1-seed0"]["error"]
    seqinv = json.loads((Path(runs["tissue-seqinv-frac1-seed0"]["folder"]) / "overrides.json").read_text())
    assert seqinv["pretrained"] is True and seqinv["encoder_path"].endswith("models/encoder_best.pt")
    assert Path(seqinv["encoder_path"]).is_file()
    random_init = json.loads((Path(runs["tissue-random-frac1-seed0"]["folder"]) / "overrides.json").read_text())
    assert random_init["pretrained"] is False and "encoder_path" not in random_init

    table = (out / "results.md").read_text()
    assert "tissue: dice_mean" in table and "phantom [T1w]" in table and "mni152 [T1w]" in table
    assert "**Incomplete: 2 of 5 runs did not finish**" in table.splitlines()[2]
    broken_section = table.split("broken: dice_mean")[1]
    assert "No finished runs" in broken_section
    assert "broken-seqinv-frac1-seed0 | failed" in table
    records = [r for r in _csv_rows(out / "results.csv") if r["task"] == "tissue" and r["metric"] == "dice_mean"]
    assert records and all(0.0 <= float(r["mean"]) <= 1.0 for r in records)
    assert "tissue: dice_mean" in (out / "results.md").read_text()

    # Second run: the finished runs are reused (same hash), the failed ones are tried again and fail again.
    before = {label: (Path(row["folder"]) / "result.json").stat().st_mtime_ns for label, row in runs.items()
              if row["status"] == STATUS_OK}
    assert main(["experiment", str(grid_path), "--out", str(out), "--quiet"]) == 1
    again = {row["label"]: row for row in _csv_rows(out / "runs.csv")}
    for label, mtime in before.items():
        assert again[label]["cached"] == "True"
        assert (Path(again[label]["folder"]) / "result.json").stat().st_mtime_ns == mtime
    assert again["broken-random-frac1-seed0"]["cached"] == "False"


def test_relative_paths_in_grid_overrides_are_taken_from_the_current_folder(tmp_path, monkeypatch):
    grid_path = write_grid(tmp_path / "grid")
    grid = yaml.safe_load(grid_path.read_text())
    grid["downstream"][0]["overrides"].update(dataset_dir="data_manifests/ixi.json", text_model_dir="~/bert",
                                              encoder_file="$@x", label_path="")
    grid_path.write_text(yaml.safe_dump(grid))
    monkeypatch.chdir(tmp_path)
    overrides = load_grid(Path("grid") / "grid.yaml").downstream[0].overrides
    assert overrides["dataset_dir"] == str(tmp_path.resolve() / "data_manifests" / "ixi.json")
    assert overrides["text_model_dir"] == str(Path("~/bert").expanduser())
    assert overrides["demo_data_dir"] == "{out_dir}/data/downstream"  # resolved when the run starts
    assert overrides["encoder_file"] == "$@x" and overrides["label_path"] == ""
    assert overrides["patch_size"] == [16, 16, 16]  # not a path: untouched


def test_downstream_of_a_failed_pretraining_is_skipped(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    pretrain = replace(grid.pretraining, overrides={**grid.pretraining.overrides, "dataset_dir": "/no/such/dir"})
    grid = replace(grid, pretraining=pretrain, downstream=grid.downstream[:1])
    from mri_ssl.experiments import run_grid

    results = {r.run.label: r for r in run_grid(grid, tmp_path / "out", progress=False,
                                                only=lambda run: run.mode == "seqinv")}
    assert results["pretrain-seqinv-seed0"].status == STATUS_FAILED
    assert "datalist not found" in results["pretrain-seqinv-seed0"].reason
    assert results["tissue-seqinv-frac1-seed0"].status == STATUS_SKIPPED


def test_error_summary_prefers_our_input_error_then_the_root_cause():
    log = ("Traceback ...\nmri_ssl.errors.InputError: /x/manifest.json: datalist not found\n\nThe above exception ...\n"
           "RuntimeError: Failed to evaluate ConfigExpression:\n    \"$resolve_datalist(...)\"\n")
    assert error_summary(log) == "mri_ssl.errors.InputError: /x/manifest.json: datalist not found"
    assert error_summary("KeyError: 'a'\n\nduring handling\nRuntimeError: wrapped\n") == "KeyError: 'a'"
    assert error_summary("killed after the time limit\n") == "killed after the time limit"


def _csv_rows(path):
    import csv

    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_a_grid_whose_overrides_fail_the_static_scan_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = write_grid(tmp_path / "grid")
    content = yaml.safe_load(path.read_text())
    content["downstream"][0]["overrides"]["learning_rate"] = f"$__import__('os').system('touch {marker}')"
    path.write_text(yaml.safe_dump(content))
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 2
    assert not marker.exists() and not (out / "runs").exists()
    with pytest.raises(InputError, match="(?s)learning_rate.*--trust-bundle"):
        from mri_ssl.experiments.runner import require_trusted

        require_trusted(load_grid(path))


# ------------------------------------------------------------------------------------------------ parallel runs


def test_parallel_runs_respect_the_job_limit_and_wait_for_their_pretraining(tmp_path, monkeypatch):
    """With jobs=2, at most two runs overlap, no downstream run starts before its pretraining run has finished,
    every run gets half the CPU threads, and the results come back in grid order."""
    import threading
    import time

    from mri_ssl.experiments import runner

    grid = load_grid(write_grid(tmp_path, modes=("random", "base", "seqaug", "seqinv")))
    spans, active, peak = {}, [0], [0]
    lock = threading.Lock()

    def fake_execute(run, folder, infer=True, on_epoch=None, timeout_s=None, environment=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        started = time.monotonic()
        time.sleep(0.3 if run.kind == "pretrain" else 0.02)  # downstream slots free up while pretraining runs
        with lock:
            active[0] -= 1
        spans[run.label] = (started, time.monotonic(), dict(environment or {}))
        return runner.RunResult(run, STATUS_OK, folder)

    monkeypatch.setattr(runner, "execute_run", fake_execute)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 4)
    results = runner.run_grid(grid, tmp_path / "out", progress=False, trust_bundles=True, jobs=2)

    assert [r.run.label for r in results] == [r.label for r in expand_runs(grid)]
    assert all(r.status == STATUS_OK for r in results) and len(spans) == len(results) == 7
    assert peak[0] == 2
    for result in results:
        run = result.run
        assert spans[run.label][2] == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        if run.upstream is not None:
            assert spans[run.label][0] >= spans[run.upstream.label][1]


def test_job_count_is_checked(tmp_path):
    from mri_ssl.experiments import run_grid
    from mri_ssl.experiments.runner import thread_environment

    with pytest.raises(InputError, match="jobs"):
        run_grid(load_grid(write_grid(tmp_path)), tmp_path / "out", progress=False, trust_bundles=True, jobs=0)
    assert thread_environment(1) == {}  # one job keeps the user's own thread settings
    assert thread_environment(3, cpus=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_stage_progress_reads_epochs_and_their_total_from_the_log(tmp_path):
    import sys

    from mri_ssl.experiments.runner import _run_stage

    script = ("import time\n"
              "print('Engine run resuming from iteration 0, epoch 0 until 3 epochs', flush=True)\n"
              "for epoch in (1, 2, 3):\n"
              "    time.sleep(1.2)\n"
              "    print(f'Epoch[{epoch}] Complete. Time taken: 00:00:01', flush=True)\n"
              "print('Engine run resuming from iteration 0, epoch 0 until 1 epochs', flush=True)\n")
    seen = []
    code, cpu_seconds = _run_stage([sys.executable, "-c", script], tmp_path / "train.log",
                                   lambda e, t: seen.append((e, t)), None)
    assert code == 0
    assert cpu_seconds is None or 0 < cpu_seconds < 3.0  # it mostly sleeps
    assert seen and seen[-1] == (3, 3) and all(total == 3 for _, total in seen)
    assert [epoch for epoch, _ in seen] == sorted(set(epoch for epoch, _ in seen))  # each epoch reported once


def test_stage_cpu_time_counts_the_child_and_the_exit_status_is_kept(tmp_path):
    import sys

    from mri_ssl.experiments.runner import _run_stage

    busy = ("import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end:\n    pass\n"
            "raise SystemExit(3)\n")
    code, cpu_seconds = _run_stage([sys.executable, "-c", busy], tmp_path / "busy.log", None, None)
    assert code == 3
    if cpu_seconds is not None:  # POSIX
        assert 1.0 <= cpu_seconds < 5.0


# ------------------------------------------------------------------------------------------------ a bundle's own modes


def test_the_3d_grids_keep_their_run_identities(tmp_path):
    """Naming modes per grid leaves the 3-D grids' runs as they were: each pretraining run sets `view_mode`, the
    hash is the formula it always was (so finished runs are reused), and `mode_key: view_mode` is the default."""
    import hashlib

    def old_hash(run):
        identity = {
            "bundle": run.spec.bundle_dir.name,
            "stages": [(stage, [[path.name, hashlib.sha256(path.read_bytes()).hexdigest()] for path in files])
                       for stage, files in run.stages(True)],
            "overrides": run.overrides, "upstream": run.upstream.config_hash if run.upstream else None,
            "encoder": "encoder_best.pt" if run.upstream else None}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()

    for name in ("demo.yaml", "learning_curves.yaml", "paper_tables.yaml"):
        runs = expand_runs(load_grid(REPO / "experiments" / name))
        assert all(run.config_hash == old_hash(run) for run in runs), name
        assert all(run.overrides["view_mode"] == run.mode for run in runs if run.kind == "pretrain"), name
    path = write_grid(tmp_path)
    content = yaml.safe_load(path.read_text())
    content["pretraining"]["mode_key"] = "view_mode"
    explicit = tmp_path / "explicit" / "grid.yaml"
    explicit.parent.mkdir()
    explicit.write_text(yaml.safe_dump(content))
    hashes = [[r.config_hash for r in expand_runs(load_grid(grid))] for grid in (explicit, path)]
    assert hashes[0] == hashes[1]


def test_a_grid_names_its_own_pretraining_mode_and_encoder_file():
    grid = load_grid(REPO / "experiments" / "cardiac_label_efficiency.yaml")
    assert grid.modes == ("random", "simsiam") and grid.pretraining.mode_key is None
    assert grid.label_fractions == (0.01, 0.1, 1.0)
    runs = expand_runs(grid)
    pretrain = [r for r in runs if r.kind == "pretrain"]
    assert [r.label for r in pretrain] == [f"pretrain-simsiam-seed{s}" for s in grid.seeds]
    assert all("view_mode" not in r.overrides and r.overrides["seed"] == r.seed for r in pretrain)
    downstream = [r for r in runs if r.kind == "downstream"]
    assert len(downstream) == len(grid.columns) * 3 * 3
    encoders = {**{mode: mode for mode in grid.modes}, **{v.name: v.encoder for v in grid.variants}}
    for run in downstream:
        assert run.overrides["pretrained"] == (encoders[run.mode] == "simsiam")
        assert (run.upstream is None) == (encoders[run.mode] == "random")
        assert run.upstream is None or (run.upstream.seed == run.seed and run.upstream.spec.encoder ==
                                        "simsiam/encoder_best.pt")
    assert len({r.config_hash for r in runs}) == len(runs)


def test_the_cmr_grid_probes_the_video_text_encoder_of_its_own_seed():
    from mri_ssl.experiments.runner import untrusted_findings

    grid = load_grid(REPO / "experiments" / "cmr_label_efficiency.yaml")
    assert grid.modes == ("random", "clip") and grid.pretraining.mode_key is None
    assert grid.label_fractions == (0.01, 0.1, 1.0) and grid.seeds == (0, 1, 2)
    runs = expand_runs(grid)
    pretrain = [r for r in runs if r.kind == "pretrain"]
    assert [r.label for r in pretrain] == [f"pretrain-clip-seed{s}" for s in grid.seeds]
    assert [[p.name for p in files] for _, files in pretrain[0].stages()] == [["train.json", "cpu_demo.json"]]
    # the CLIP run's folder does not depend on the seed, so the grid's encoder file names it for every seed
    assert all(r.overrides["run_name"] == "clip" and r.spec.encoder == "clip/best.pt" for r in pretrain)
    downstream = [r for r in runs if r.kind == "downstream"]
    encoders = {"random": "random", "clip": "clip", **{v.name: v.encoder for v in grid.variants}}
    assert "scratch" in encoders and encoders["scratch"] == "random"  # supervised from scratch
    assert len(downstream) == len(encoders) * 3 * 3
    assert [(stage, [p.name for p in files]) for stage, files in downstream[0].stages()] == [
        ("train", ["classify.json", "cpu_demo.json"]),
        ("evaluate", ["classify.json", "classify_evaluate.json", "cpu_demo.json"])]
    for run in downstream:
        assert run.overrides["pretrained"] == (encoders[run.mode] == "clip")
        assert run.upstream is None if encoders[run.mode] == "random" else run.upstream.seed == run.seed
        # the probe columns keep the encoder frozen; the variants train it end to end with the head
        assert run.overrides.get("freeze_encoder", True) == (run.mode in ("random", "clip"))
        assert run.overrides["demo_data_dir"] == "{out_dir}/data/cmr"  # the pretraining's phantom, written once
    assert pretrain[0].overrides["demo_data_dir"] == "{out_dir}/data/cmr"
    assert len({r.config_hash for r in runs}) == len(runs) and untrusted_findings(grid) == []


def test_a_task_s_mode_overrides_may_name_a_variant_for_that_task_only(tmp_path):
    denoising = {"name": "denoising", "bundle": "mri_denoising", "configs": ["train.json", "cpu_demo.json"],
                 "metrics": {"psnr_db": "higher"}, "overrides": {"num_epochs": 3}}
    path = write_grid(tmp_path, extra_downstream=[denoising],
                      variants={"simaug": {"encoder": "random", "overrides": {"training_contrast": "simulated",
                                                                              "num_epochs": 2}}})
    content = yaml.safe_load(path.read_text())
    content["downstream"][0]["mode_overrides"] = {"random": {"dice_batch": True}, "simaug": {"num_epochs": 5}}
    path.write_text(yaml.safe_dump(content))
    runs = {r.label: r.overrides for r in expand_runs(load_grid(path)) if r.kind == "downstream"}
    # The tissue entry naming the variant wins over the variant's own overrides; its encoder's entry applies too.
    assert runs["tissue-simaug-frac1-seed0"]["num_epochs"] == 5
    assert runs["tissue-simaug-frac1-seed0"]["dice_batch"] is True
    assert runs["tissue-random-frac1-seed0"]["num_epochs"] == 1 and runs["tissue-random-frac1-seed0"]["dice_batch"]
    # The other task keeps the variant's own overrides.
    assert runs["denoising-simaug-frac1-seed0"]["num_epochs"] == 2
    assert "dice_batch" not in runs["denoising-simaug-frac1-seed0"]
    content["downstream"][0]["mode_overrides"] = {"simaugg": {"num_epochs": 5}}
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(InputError, match="mode_overrides.*simaugg"):
        load_grid(path)


def test_modes_without_a_mode_key_differ_by_their_mode_overrides(tmp_path):
    path = write_grid(tmp_path)
    content = yaml.safe_load(path.read_text())
    content.update(modes=["random", "short", "long"])
    content["pretraining"].update(mode_key=None, mode_overrides={"short": {"num_epochs": 1}, "long": {"num_epochs": 2}})
    path.write_text(yaml.safe_dump(content))
    pretrain = {r.mode: r for r in expand_runs(load_grid(path)) if r.kind == "pretrain"}
    assert pretrain["short"].overrides["num_epochs"] == 1 and pretrain["long"].overrides["num_epochs"] == 2
    assert "view_mode" not in pretrain["short"].overrides
    assert pretrain["short"].config_hash != pretrain["long"].config_hash


def test_a_classifier_run_loads_the_named_encoder_and_its_scores_reach_the_table(tmp_path, monkeypatch):
    """execute_run with the bundle stages faked: the downstream run gets the pretraining run's
    `models/simsiam/encoder_best.pt`, and the classifier's metrics.json becomes a table row."""
    from mri_ssl.experiments import runner

    grid = load_grid(REPO / "experiments" / "cardiac_label_efficiency.yaml")
    grid = replace(grid, seeds=(0, 1), label_fractions=(0.01,), variants=())
    runs = [r for r in expand_runs(grid) if r.kind == "downstream"]
    auc = {("random", 0): 0.6, ("random", 1): 0.8, ("simsiam", 0): 0.9, ("simsiam", 1): 0.95}

    def fake_stage(command, log_path, on_epoch, timeout_s, environment=None):
        folder = log_path.parent
        if log_path.name == "evaluate.log":
            overrides = json.loads((folder / "overrides.json").read_text())
            mode = "simsiam" if overrides["pretrained"] else "random"
            metrics = {"images": 140, "auc": {"T1": 0.5, "T2": float("nan")}, "accuracy": 0.4,
                       "mean_auc": auc[(mode, overrides["seed"])], "confusion_matrix": [[1]], "class_names": ["T1"]}
            (folder / "logs" / "evaluation").mkdir(parents=True)
            (folder / "logs" / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
        log_path.write_text("ok\n")
        return 0, 1.0

    monkeypatch.setattr(runner, "_run_stage", fake_stage)
    results = [runner.execute_run(run, runner.run_folder(tmp_path, run)) for run in runs]
    assert all(r.status == STATUS_OK for r in results), [r.reason for r in results]
    for result in results:
        overrides = json.loads((result.folder / "overrides.json").read_text())
        if result.run.mode == "simsiam":
            assert overrides["encoder_path"] == str(runner.run_folder(tmp_path, result.run.upstream) / "models" /
                                                    "simsiam" / "encoder_best.pt")
        else:
            assert "encoder_path" not in overrides and overrides["pretrained"] is False
    assert results[0].summary["overall"]["mean_auc"] == {"mean": auc[("random", 0)], "n": 140}
    records = {r["mode"]: r for r in collect(grid, results) if r["metric"] == "mean_auc"}
    assert records["simsiam"]["mean"] == pytest.approx(0.925) and records["random"]["mean"] == pytest.approx(0.7)
    table = markdown_table(collect(grid, results), grid, grid.downstream[0], "mean_auc")
    assert "1% labels<br>Supervised from scratch | 1% labels<br>SimSiam + fine-tuning" in table
    assert "| all test cases | <u>0.700 ± 0.141</u> | **0.925 ± 0.035** |" in table and "In domain" not in table


def test_an_evaluation_without_a_summary_or_classifier_scores_fails_the_run(tmp_path):
    from mri_ssl.experiments.runner import read_evaluation_summary

    with pytest.raises(OSError):
        read_evaluation_summary(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"recall_at_5": 0.3}))
    with pytest.raises(ValueError, match="classification scores"):
        read_evaluation_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"overall": {"dice_mean": {"mean": 0.5}}}))
    assert read_evaluation_summary(tmp_path)["overall"]["dice_mean"]["mean"] == 0.5


def test_the_fundus_grid_pretrains_the_whole_camcontrast_chain_in_one_run_folder():
    grid = load_grid(REPO / "experiments" / "fundus_label_efficiency.yaml")
    assert grid.modes == ("random", "camcontrast") and grid.label_fractions == (0.01, 0.1, 1.0)
    runs = expand_runs(grid)
    pretrain = [r for r in runs if r.kind == "pretrain"]
    assert len(pretrain) == 3
    assert [(stage, [p.name for p in files]) for stage, files in pretrain[0].stages()] == [
        ("train", ["stage1.json", "cpu_demo.json"]),
        ("stage1_evaluate", ["stage1.json", "evaluate.json", "cpu_demo.json"]),
        ("stage1_overlays", ["stage1.json", "inference.json", "cpu_demo.json"]),
        ("heatmaps", ["stage1.json", "generate_heatmaps.json", "cpu_demo.json"]),
        ("pretrain", ["pretrain.json", "cpu_demo.json"])]
    downstream = [r for r in runs if r.kind == "downstream"]
    assert len(downstream) == 2 * 2 * 3 * 3
    for run in downstream:  # the random column loads nothing; the pretrained one gets encoder_path from the runner
        assert (run.upstream is None) == (run.mode == "random")
    # The demo's runs are this grid's 100 % runs (same hashes): in the demo's --out folder the grid reuses them.
    demo = {run.label: run.config_hash for run in expand_runs(load_grid(REPO / "experiments" / "demo_fundus.yaml"))}
    shared = {run.label: run.config_hash for run in runs if run.label in demo}
    assert len(shared) == len(demo) == 15 and all(demo[label] == digest for label, digest in shared.items())
    from mri_ssl.experiments.runner import untrusted_findings

    assert untrusted_findings(grid) == []
