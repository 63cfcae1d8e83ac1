"""SimSiam + fine-tuning vs supervised-only vs linear probe on the phantom test split, over several seeds.

Every number comes from bundle runs made here, through ``python -m monai.bundle run`` exactly as the README lists
them: per seed, SimSiam pretraining (pretrain.json), then three arms with the same classifier budget (train.json):
fine-tuning the SimSiam encoder, a linear probe on the frozen SimSiam encoder (linear_probe.json), and a
supervised-from-scratch baseline (supervised.json); each is evaluated on the test split (evaluate.json). The phantom
data (seed 0) are the same for every seed; the seed changes initialisation, shuffling and augmentation.

    python bundles/cardiac_sequence_classification/scripts/compare_arms.py --out compare_out --seeds 0 1 2 \\
        [--overrides extra.json]

Prints one row per seed and arm, then mean and sample std over seeds; writes ``summary.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = BUNDLE / "configs"
ARMS = {"simsiam_ft": [], "linear_probe": ["linear_probe.json"], "supervised": ["supervised.json"]}


def run(root: Path, configs: list[str], log: Path) -> None:
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(root)]
    with open(log, "a") as stream:
        result = subprocess.run(command, cwd=root, stdout=stream, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if result.returncode != 0:
        raise SystemExit(f"bundle run failed ({' '.join(Path(c).name for c in configs)}); see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (one bundle root per seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--overrides", default=None, help="a JSON file of extra bundle overrides for every run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpu = str(CONFIGS / "cpu_demo.json")
    extra = [str(Path(args.overrides).resolve())] if args.overrides else []
    results = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        root = out / f"seed{seed}"
        root.mkdir(exist_ok=True)
        seed_file = root / "seed.json"
        seed_file.write_text(json.dumps({"seed": seed, "demo_data_dir": str(out / "demo_data"),
                                         "progress_bar": False}))
        log = root / "runs.log"
        started = time.perf_counter()
        run(root, [str(CONFIGS / "pretrain.json"), cpu, *extra, str(seed_file)], log)
        for arm, arm_configs in ARMS.items():
            arm_files = [str(CONFIGS / name) for name in arm_configs]
            run(root, [str(CONFIGS / "train.json"), *arm_files, cpu, *extra, str(seed_file)], log)
            run(root, [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json"), *arm_files, cpu, *extra,
                       str(seed_file)], log)
            logs = {"simsiam_ft": "logs", "linear_probe": "logs/linear_probe", "supervised": "logs/supervised"}[arm]
            metrics = json.loads((root / logs / "evaluation" / "metrics.json").read_text())
            results[arm].append(metrics)
            print(f"seed {seed}  {arm:13s} mean AUC {metrics['mean_auc']:.4f}  accuracy {metrics['accuracy']:.4f}  "
                  f"({metrics['images']} test images)", flush=True)
        print(f"seed {seed} took {time.perf_counter() - started:.0f} s", flush=True)
    summary = {}
    print("\narm            mean AUC (mean +- sd over seeds)   accuracy")
    for arm, runs in results.items():
        aucs = [r["mean_auc"] for r in runs]
        accuracies = [r["accuracy"] for r in runs]
        sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        summary[arm] = {"mean_auc": aucs, "accuracy": accuracies,
                        "per_class_auc": [r["auc"] for r in runs]}
        print(f"{arm:13s}  {statistics.mean(aucs):.4f} +- {sd:.4f}                  "
              f"{statistics.mean(accuracies):.4f}")
    (out / "summary.json").write_text(json.dumps({"seeds": args.seeds, "results": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
