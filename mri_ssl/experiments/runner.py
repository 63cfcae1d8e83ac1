"""Run an experiment grid: each run is `python -m monai.bundle run` in its own folder, cached by config hash.

Layout of the output folder::

    OUT/grid.yaml                       the grid as read (a copy, for the record)
    OUT/runs/<label>-<hash10>/          one folder per run, the bundle's ``bundle_root``
        overrides.json                  the overrides given after the bundle's config files
        <stage>.log                     what the bundle printed, per stage (train / evaluate / inference)
        models/, logs/evaluation/...    what the bundle wrote (checkpoints, the evaluation report: summary.json, or
                                        a classifier's metrics.json, see ``read_evaluation_summary``)
        result.json                     written last: status, seconds, config hash, the evaluation summary and, for
                                        a pretraining run, its representation probe history (logs/probe.json)
    OUT/runs.csv                        every run with its status

A run whose ``result.json`` says ``ok`` with the same config hash is skipped on a re-run. A failed run is reported
(its ``result.json`` holds the stage and the end of its log) and the grid goes on; the downstream runs of a failed
pretraining run are reported as skipped. Each run is a subprocess, so a crash or leak stays inside it and its
memory goes back to the system when it ends. Bundle processes end with the runner, a run folder still used by a live
process is never deleted, and one runner at a time writes an output folder (``mri_ssl.experiments.processes``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mri_ssl.errors import InputError
from mri_ssl.experiments.grid import Grid, Run, expand_placeholders, expand_runs
from mri_ssl.experiments.processes import (BUNDLE_PROCESSES, clear_run_folder, output_lock, stop_on_signals,
                                           write_owner)
from mri_ssl.io.atomic import atomic_write_text, save_json
from mri_ssl.trust.scan import scan_bundle, scan_overrides

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"
RESULT_FILE = "result.json"
EVALUATION_DIR = Path("logs") / "evaluation"
SUMMARY_FILE = "summary.json"  # mri_ssl.metrics.report's summary: segmentation, denoising
CLASSIFICATION_FILE = "metrics.json"  # mri_ssl.engines.ClassificationReport's scores: sequence classification
LOG_TAIL_CHARS = 3000
EPOCH_PATTERN = re.compile(r"Epoch\[(\d+)\] Complete")
TOTAL_EPOCHS_PATTERN = re.compile(r"until (\d+) epochs")  # ignite's first "Engine run ... until N epochs" line


@dataclass
class RunResult:
    run: Run
    status: str
    folder: Path
    seconds: float = 0.0
    cpu_seconds: float | None = None   # user + system CPU time of the run's processes (None: not measured)
    cached: bool = False
    error: str = ""              # what went wrong, with the end of the failed stage's log
    reason: str = ""             # the one line that says why (see ``error_summary``)
    log: str = ""                # the failed stage's log file
    summary: dict | None = None
    probe: dict | None = None    # a pretraining run's representation probe history (``logs/probe.json``)

    def row(self) -> dict:
        return {"label": self.run.label, "kind": self.run.kind, "task": self.run.task, "mode": self.run.mode,
                "fraction": self.run.fraction, "seed": self.run.seed, "status": self.status,
                "cached": self.cached, "seconds": round(self.seconds, 1),
                "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 1),
                "hash": self.run.config_hash[:10], "folder": str(self.folder), "error": self.reason}


def run_folder(out_dir: Path, run: Run) -> Path:
    return out_dir / "runs" / f"{run.label}-{run.config_hash[:10]}"


def _read_result(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def bundle_command(bundle_dir: Path, config_files, bundle_root: Path) -> list[str]:
    """`python -m monai.bundle run` of ``config_files`` (later ones override earlier ones) in ``bundle_root``; the
    bundle's own metadata and logging config are named, as the overrides file lives outside its configs folder."""
    files = "[" + ",".join(f"'{path}'" for path in config_files) + "]"
    configs = bundle_dir / "configs"
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle_root),
            "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]


def _run_stage(command: list[str], log_path: Path, on_epoch: Callable[[int, int | None], None] | None,
               timeout_s: float | None, environment: dict[str, str] | None = None) -> tuple[int, float | None]:
    """Run one bundle stage with its output in ``log_path``; report finished epochs (and the total, once the trainer
    has logged it) from the log as it grows. Returns the exit status and the stage's CPU seconds (user + system; None
    where ``os.wait4`` is missing)."""
    env = {**os.environ, **(environment or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = BUNDLE_PROCESSES.start(command, stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent, env=env)
    try:
        write_owner(log_path.parent, process.pid)
        return _follow_stage(process, log_path, on_epoch, timeout_s)
    finally:
        BUNDLE_PROCESSES.finished(process)


def _follow_stage(process: subprocess.Popen, log_path: Path, on_epoch: Callable[[int, int | None], None] | None,
                  timeout_s: float | None) -> tuple[int, float | None]:
    started, seen = time.monotonic(), 0
    while True:
        return_code, cpu_seconds = _wait(process, timeout_s=0.5)
        if on_epoch is not None:
            try:
                text = log_path.read_text(errors="replace")
            except OSError:
                text = ""
            epochs = [int(m) for m in EPOCH_PATTERN.findall(text)]
            if epochs and max(epochs) != seen:
                seen = max(epochs)
                total = TOTAL_EPOCHS_PATTERN.search(text)
                on_epoch(seen, int(total.group(1)) if total else None)
        if return_code is not None:
            return return_code, cpu_seconds
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            process.kill()
            process.wait()
            with open(log_path, "a") as log:
                log.write(f"\nmri-ssl experiment: killed after the time limit of {timeout_s:.0f} s\n")
            return -9, None


def _wait(process: subprocess.Popen, timeout_s: float) -> tuple[int | None, float | None]:
    """Wait up to ``timeout_s`` for ``process``; its exit status (None while it runs) and, once it has ended, its CPU
    seconds from ``os.wait4`` (POSIX; elsewhere None)."""
    if not hasattr(os, "wait4"):
        try:
            return process.wait(timeout=timeout_s), None
        except subprocess.TimeoutExpired:
            return None, None
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.05)


ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


def error_summary(text: str) -> str:
    """The most telling line of a failed run's output: mri_ssl's own ``InputError`` (it names the file and the
    problem), else the first exception line (with chained tracebacks, the root cause comes first), else the last
    line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    ours = [line for line in errors if "InputError" in line]
    if ours or errors:
        return (ours or errors)[-1 if ours else 0]
    return lines[-1] if lines else ""


def _read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def execute_run(run: Run, folder: Path, infer: bool = True,
                on_epoch: Callable[[int, int | None], None] | None = None,
                timeout_s: float | None = None, environment: dict[str, str] | None = None) -> RunResult:
    """Run every stage of ``run`` in ``folder`` (emptied first); write and return its result. ``environment`` is
    added to the bundle processes' environment (e.g. thread counts)."""
    folder = Path(folder).resolve()  # the bundle's working folder: the paths handed to it must not be relative
    clear_run_folder(folder)  # a stale or failed attempt: start clean so no old checkpoint is resumed by mistake
    folder.mkdir(parents=True)
    write_owner(folder)
    out_dir = folder.parents[1]
    overrides = expand_placeholders(dict(run.overrides), {"out_dir": out_dir})
    if run.upstream is not None:
        overrides["encoder_path"] = str(run_folder(out_dir, run.upstream) / "models" / run.upstream.spec.encoder)
    overrides_path = save_json(overrides, folder / "overrides.json")
    started = time.perf_counter()
    result = RunResult(run, STATUS_OK, folder)
    stage_costs = {}
    for stage, files in run.stages(infer):
        log_path = folder / f"{stage}.log"
        command = bundle_command(run.spec.bundle_dir, [*files, overrides_path], folder)
        stage_started = time.perf_counter()
        code, cpu_seconds = _run_stage(command, log_path, on_epoch if stage == "train" else None, timeout_s,
                                       environment)
        stage_costs[stage] = {"wall_s": round(time.perf_counter() - stage_started, 2),
                              "cpu_s": None if cpu_seconds is None else round(cpu_seconds, 2)}
        if code != 0:
            log = _read_log(log_path)
            result.status = STATUS_FAILED
            result.reason = f"{stage}: {error_summary(log) or f'exit status {code}'}"
            result.error = f"{stage} exited with status {code}; end of {log_path.name}:\n{log[-LOG_TAIL_CHARS:]}"
            result.log = str(log_path)
            break
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = total_cpu_seconds(stage_costs)
    if result.status == STATUS_OK and run.spec.evaluate:
        try:
            result.summary = read_evaluation_summary(folder / EVALUATION_DIR)
        except (OSError, ValueError) as error:
            result.status = STATUS_FAILED
            evaluation = folder / EVALUATION_DIR
            result.error = result.reason = (f"the evaluation wrote no readable {evaluation / SUMMARY_FILE} or "
                                            f"{CLASSIFICATION_FILE} ({error})")
    probe_path = folder / "logs" / run.spec.probe
    if probe_path.is_file():
        try:
            result.probe = json.loads(probe_path.read_text())
        except ValueError:
            result.probe = {"error": f"unreadable {probe_path}"}
    save_json({"label": run.label, "status": result.status, "config_hash": run.config_hash,
               "seconds": round(result.seconds, 2), "stages": stage_costs, "reason": result.reason,
               "error": result.error,
               "overrides": overrides, "summary": result.summary, "probe": result.probe}, folder / RESULT_FILE)
    return result


def read_evaluation_summary(evaluation_dir: Path) -> dict:
    """A run's evaluation as the tables read it (``mri_ssl.metrics.report``'s layout: ``overall`` and
    ``by_site_sequence``, each metric a ``{"mean": ...}``): ``summary.json`` as written (a flat one, scores over
    the whole split, as ``overall`` metrics), else a classifier's
    ``metrics.json`` (``ClassificationReport``) with its scores over the whole split (``mean_auc``, ``accuracy``,
    ``auc_<class>``) as ``overall`` metrics, else a video-text ``metrics.json`` (``retrieval_summary``). Raises
    ``OSError`` / ``ValueError`` when none is readable."""
    summary_path = evaluation_dir / SUMMARY_FILE
    if summary_path.is_file() or not (evaluation_dir / CLASSIFICATION_FILE).is_file():
        summary = json.loads(summary_path.read_text())
        if isinstance(summary, dict) and not ({"overall", "by_site_sequence"} & set(summary)):
            # a flat summary of scores over the whole split (the fundus bundle's FundusEvaluationReport)
            return {"n_cases": summary.get("cases"), "overall": {
                name: {"mean": float(value), "n": summary.get("cases")} for name, value in summary.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "cases"}}
        return summary
    metrics = json.loads((evaluation_dir / CLASSIFICATION_FILE).read_text())
    if isinstance(metrics, dict) and "retrieval" in metrics:
        return retrieval_summary(metrics, evaluation_dir / CLASSIFICATION_FILE)
    if not isinstance(metrics, dict) or "mean_auc" not in metrics or not isinstance(metrics.get("auc"), dict):
        raise ValueError(f"{evaluation_dir / CLASSIFICATION_FILE} holds no classification scores (mean_auc, auc)")
    scores = {"mean_auc": metrics["mean_auc"], "accuracy": metrics.get("accuracy"),
              **{f"auc_{name}": value for name, value in metrics["auc"].items()}}
    images = metrics.get("images")
    return {"n_cases": images, "overall": {name: {"mean": value, "n": images} for name, value in scores.items()
                                           if value is not None}}


UNTRAINED, TRAINED = "untrained (step 0)", "trained"


def retrieval_summary(metrics: dict, path: str | os.PathLike) -> dict:
    """A video-text evaluation's ``metrics.json`` (``mri_ssl.engines.video_text.VideoTextEvaluator``: a ``retrieval``
    row and a ``linear_probe`` row per model) in the tables' layout: one group per model, ``untrained (step 0)`` (the
    same network before training, the zero-shot reference) and ``trained``, with the retrieval metrics (R@K, MdR,
    RSUM) and the linear probe's ``probe_macro_auc`` / ``probe_accuracy``. Raises ``ValueError`` naming ``path`` when it
    holds no retrieval rows."""
    rows = metrics.get("retrieval")
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path} holds no retrieval rows (a list of per-model metrics)")
    probes = {row.get("model"): row for row in metrics.get("linear_probe") or [] if isinstance(row, dict)}
    groups = {}
    for row in rows:
        group = UNTRAINED if "untrained" in str(row.get("model", "")) else TRAINED
        n = row.get("num_queries")
        values = {key: value for key, value in row.items() if key not in ("model", "num_queries")}
        probe = probes.get(row.get("model")) or {}
        values.update({f"probe_{key}": probe[key] for key in ("macro_auc", "accuracy") if key in probe})
        groups[group] = {key: {"mean": float(value), "n": n} for key, value in values.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {"n_cases": rows[-1].get("num_queries"), "by_site_sequence": groups}


def total_cpu_seconds(stage_costs: dict) -> float | None:
    """The CPU seconds of a run from its per-stage ``{"wall_s", "cpu_s"}`` record; None if any stage lacks one."""
    cpu = [cost.get("cpu_s") for cost in stage_costs.values()]
    return sum(cpu) if cpu and None not in cpu else None


def cached_result(run: Run, folder: Path) -> RunResult | None:
    """The finished result of an identical earlier run in ``folder``, or None."""
    content = _read_result(folder)
    if not content or content.get("status") != STATUS_OK or content.get("config_hash") != run.config_hash:
        return None
    return RunResult(run, STATUS_OK, folder, seconds=float(content.get("seconds", 0.0)), cached=True,
                     cpu_seconds=total_cpu_seconds(content.get("stages") or {}),
                     summary=content.get("summary"), probe=content.get("probe"))


def untrusted_findings(grid: Grid) -> list[str]:
    """What the bundle static scan (``mri_ssl.trust``) refuses in the grid's bundles and in its overrides."""
    specs = ([grid.pretraining] if grid.pretraining else []) + list(grid.downstream)
    findings = [str(f) for bundle in dict.fromkeys(spec.bundle_dir for spec in specs) for f in scan_bundle(bundle)]
    for spec in specs:
        for mode, overrides in [("", spec.overrides)] + list(spec.mode_overrides.items()):
            name = f"{grid.path.name} {spec.name} {mode} overrides".replace("  ", " ")
            findings += [str(f) for f in scan_overrides(overrides, name.replace(" ", "_"))]
    return findings


def require_trusted(grid: Grid) -> None:
    """Raise an ``InputError`` listing what the static scan refused in the grid's bundles or overrides, if anything."""
    findings = untrusted_findings(grid)
    if findings:
        raise InputError(grid.path, "the bundle static scan refused:\n  " + "\n  ".join(findings) +
                         "\nnothing was run; pass --trust-bundle to run these bundles anyway")


def thread_environment(jobs: int, cpus: int | None = None) -> dict[str, str]:
    """Environment for a bundle run when ``jobs`` runs share the machine: each gets ``cpus // jobs`` threads
    (at least 1), so parallel runs do not oversubscribe the cores. One job keeps the inherited settings."""
    if jobs <= 1:
        return {}
    threads = str(max(1, (cpus or os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_grid(grid: Grid, out_dir: str | os.PathLike, infer: bool = True, progress: bool = True,
             timeout_s: float | None = None, only: Callable[[Run], bool] | None = None,
             trust_bundles: bool = False, jobs: int = 1, wait_for_lock: bool = False) -> list[RunResult]:
    """Run (or reuse) every run of ``grid`` under ``out_dir`` (see ``_run_grid``), holding the folder's lock.

    A second runner on the same ``out_dir`` gets an ``InputError`` saying so (or, with ``wait_for_lock``, waits).
    SIGTERM / SIGINT end the bundle processes before the runner stops.
    """
    out_dir = Path(out_dir).resolve()  # each bundle runs in its own folder: every path handed to it is absolute
    out_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(out_dir, wait=wait_for_lock), stop_on_signals():
        return _run_grid(grid, out_dir, infer, progress, timeout_s, only, trust_bundles, jobs)


def _run_grid(grid: Grid, out_dir: Path, infer: bool = True, progress: bool = True,
              timeout_s: float | None = None, only: Callable[[Run], bool] | None = None,
              trust_bundles: bool = False, jobs: int = 1) -> list[RunResult]:
    """Run (or reuse) every run of ``grid`` under ``out_dir``; return one result per run, in grid order.

    ``only`` selects a subset of the runs (the others are left out of the results); ``timeout_s`` bounds each stage.
    ``jobs`` runs go at once (each with its share of the CPU threads, see ``thread_environment``); a downstream run
    starts once its pretraining run has finished. Before anything runs, the bundles and the grid's overrides pass the
    bundle static scan, or an ``InputError`` lists what it refused; ``trust_bundles=True`` runs them anyway.
    """
    from tqdm.auto import tqdm

    if int(jobs) < 1:
        raise InputError("jobs", f"must be at least 1, got {jobs}")
    jobs = int(jobs)
    if not trust_bundles:
        require_trusted(grid)
    shutil.copyfile(grid.path, out_dir / "grid.yaml")
    runs = [run for run in expand_runs(grid, infer) if only is None or only(run)]
    selected = {id(run) for run in runs}
    environment = thread_environment(jobs)
    results: dict[int, RunResult] = {}
    bar = tqdm(total=len(runs), desc=f"experiment {grid.name}", unit="run", disable=not progress)
    shown: dict[str, str] = {}  # what each running run is doing, for the bar's postfix
    shown_lock = threading.Lock()

    def show(label: str, text: str | None) -> None:
        with shown_lock:
            if text is None:
                shown.pop(label, None)
            else:
                shown[label] = text
            bar.set_postfix_str("; ".join(shown.values()), refresh=True)

    def execute(run: Run, folder: Path) -> RunResult:
        def show_epoch(epoch: int, total: int | None) -> None:
            show(run.label, f"{run.label} epoch {epoch}" + (f"/{total}" if total else ""))

        show(run.label, run.label)
        try:
            return execute_run(run, folder, infer, show_epoch if progress else None, timeout_s, environment)
        finally:
            show(run.label, None)

    def finish(run: Run, result: RunResult) -> None:
        results[id(run)] = result
        if result.status == STATUS_FAILED:
            bar.write(f"run {run.label} failed: {result.reason}")
        bar.update()

    def waiting_for_upstream(run: Run) -> bool:
        return run.upstream is not None and id(run.upstream) in selected and id(run.upstream) not in results

    pending = list(runs)
    running: dict[Future, Run] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for run in [run for run in pending if not waiting_for_upstream(run)]:
                if len(running) >= jobs:
                    break
                pending.remove(run)
                folder = run_folder(out_dir, run)
                upstream = results.get(id(run.upstream)) if run.upstream is not None else None
                if run.upstream is not None and (upstream is None or upstream.status != STATUS_OK):
                    reason = f"its pretraining run {run.upstream.label} did not finish"
                    finish(run, RunResult(run, STATUS_SKIPPED, folder, error=reason, reason=reason))
                    continue
                cached = cached_result(run, folder)
                if cached is not None:
                    finish(run, cached)
                    continue
                running[pool.submit(execute, run, folder)] = run
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    finish(running.pop(future), future.result())
    bar.close()
    ordered = [results[id(run)] for run in runs]
    write_runs_csv(ordered, out_dir / "runs.csv")
    return ordered


def failure_report(results: list[RunResult], runs_csv: str | os.PathLike | None = None) -> list[str]:
    """The closing lines a user needs when runs did not finish: how many, the first failure's reason and its log
    (a skipped run points at the failed run it waited for). Empty when every run finished."""
    missing = [result for result in results if result.status != STATUS_OK]
    if not missing:
        return []
    failed = [result for result in missing if result.status == STATUS_FAILED]
    lines = [f"{len(missing)} of {len(results)} runs did not finish ({len(failed)} failed, "
             f"{len(missing) - len(failed)} skipped): {', '.join(result.run.label for result in missing)}"]
    first = (failed or missing)[0]
    lines.append(f"first failure: {first.run.label}: {first.reason or first.status}")
    lines.append(f"its log: {first.log}" if first.log else f"its folder: {first.folder}")
    if runs_csv is not None:
        lines.append(f"every run's status: {runs_csv}")
    return lines


def write_runs_csv(results: list[RunResult], path: Path) -> Path:
    stream = io.StringIO()
    rows = [result.row() for result in results]
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, stream.getvalue())
    return path
