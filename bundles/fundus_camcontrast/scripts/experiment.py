"""The measured CAMContrast experiments on the embedded demo data (or a user's datalist), every number from a run.

1. CAM localisation of the stage-1 classifier, CE only (attention_weight 0) versus CE + guided attention (0.01):
   pointing-game accuracy and IoU of the thresholded CAM with the lesion masks of the abnormal test images.
2. Transfer: lesion segmentation (Dice, AUC-PR) and abnormality classification (ROC-AUC) at 10 % and 100 % of the
   training labels, for a random encoder, SimCLR-crop, SupCE-crop and CAMContrast, each pretrained and fine-tuned
   per seed.

Every step is the bundle's own config run through ``monai.bundle.run`` (the function behind
``python -m monai.bundle run``), in one process so the imports are paid once. Usage, from anywhere::

    python bundles/fundus_camcontrast/scripts/experiment.py --work-dir /tmp/camcontrast_experiment --seeds 0 1 2

Results: ``<work-dir>/results.json`` and a Markdown table printed at the end (mean +- sample std over seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ENCODERS = ("random", "simclr_crop", "supce_crop", "camcontrast")


def bundle_run(work_dir: Path, configs: list[str], **overrides) -> None:
    from monai.bundle import run

    files = [str(CONFIGS / f"{name}.json") for name in configs] + [str(CONFIGS / "cpu_demo.json")]
    run(config_file=files, meta_file=str(CONFIGS / "metadata.json"), bundle_root=str(work_dir),
        logging_file=str(CONFIGS / "logging.conf"), progress_bar=False, **overrides)


def summary(work_dir: Path, stage: str) -> dict:
    return json.loads((work_dir / "logs" / stage / "evaluation" / "summary.json").read_text())


def run_seed(work_dir: Path, seed: int, common: dict, pretrain_epochs: int, transfer_epochs: int,
             transfer_epoch_length: int, fractions: list[float]) -> dict:
    results = {"localisation": {}, "transfer": {}}
    heatmaps = str(work_dir / f"heatmaps_s{seed}")
    for name, weight in (("ce_only", 0.0), ("ce_attention", 0.01)):
        stage = f"stage1_{name}_s{seed}"
        bundle_run(work_dir, ["stage1"], stage=stage, seed=seed, attention_weight=weight, **common)
        bundle_run(work_dir, ["stage1", "evaluate"], stage=stage, seed=seed, attention_weight=weight, **common)
        results["localisation"][name] = summary(work_dir, stage)
    bundle_run(work_dir, ["stage1", "generate_heatmaps"], stage=f"stage1_ce_attention_s{seed}", seed=seed,
               heatmap_dir=heatmaps, **common)
    crops = os.path.join(heatmaps, "crops_datalist.json")
    pretraining = {**common, "num_epochs": pretrain_epochs}
    bundle_run(work_dir, ["pretrain"], stage=f"pretrain_camcontrast_s{seed}", method="camcontrast", seed=seed,
               heatmap_dir=heatmaps, **pretraining)
    bundle_run(work_dir, ["pretrain"], stage=f"pretrain_simclr_crop_s{seed}", method="simclr", seed=seed,
               heatmap_dir=heatmaps, **pretraining)
    # SupCE-crop: stage 1's classifier trained with cross-entropy only on the same fixed crops.
    bundle_run(work_dir, ["stage1"], stage=f"pretrain_supce_crop_s{seed}", seed=seed, attention_weight=0.0,
               dataset_dir=crops, image_size=common["image_size"] // 2,
               **{k: v for k, v in common.items() if k not in ("image_size", "dataset_dir")})
    for encoder in ENCODERS:
        path = "" if encoder == "random" else str(work_dir / "models" / f"pretrain_{encoder}_s{seed}" /
                                                  "encoder_final.pt")
        for fraction in fractions:
            row = {}
            for task, config in (("classification", "finetune_cls"), ("segmentation", "finetune_seg")):
                stage = f"{config}_{encoder}_f{fraction}_s{seed}"
                settings = dict(stage=stage, seed=seed, encoder_path=path, label_fraction=fraction,
                                num_epochs=transfer_epochs, epoch_length=transfer_epoch_length,
                                **{k: v for k, v in common.items() if k != "num_epochs"})
                bundle_run(work_dir, [config], **settings)
                bundle_run(work_dir, [config, "evaluate"], **settings)
                row[task] = summary(work_dir, stage)
            results["transfer"][f"{encoder}@{fraction}"] = row
    return results


def mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def tables(all_results: dict[int, dict], fractions: list[float]) -> str:
    seeds = sorted(all_results)
    lines = [f"CAM localisation on the demo test set (abnormal images with lesions), seeds {seeds}:", "",
             "| stage-1 loss | pointing game | CAM IoU (>= 0.5) | ROC-AUC |", "|---|---|---|---|"]
    for name, label in (("ce_only", "CE only"), ("ce_attention", "CE + 0.01 attention")):
        runs = [all_results[s]["localisation"][name] for s in seeds]
        lines.append(f"| {label} | {mean_std([r['pointing_game'] for r in runs])} | "
                     f"{mean_std([r['cam_iou'] for r in runs])} | {mean_std([r['roc_auc'] for r in runs])} |")
    lines += ["", f"Transfer on the demo test set, seeds {seeds}:", "",
              "| encoder | labels | lesion Dice (mean per image) | lesion AUC-PR | abnormality ROC-AUC |",
              "|---|---|---|---|---|"]
    for encoder in ENCODERS:
        for fraction in fractions:
            runs = [all_results[s]["transfer"][f"{encoder}@{fraction}"] for s in seeds]
            lines.append(f"| {encoder} | {fraction:.0%} | {mean_std([r['segmentation']['dice_mean'] for r in runs])} | "
                         f"{mean_std([r['segmentation']['auc_pr'] for r in runs])} | "
                         f"{mean_std([r['classification']['roc_auc'] for r in runs])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=None, help="bundle_root of all runs (models/, logs/, demo_data/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--dataset-dir", default="", help="a fundus datalist (default: the embedded demo data)")
    parser.add_argument("--epochs", type=int, default=30, help="stage-1 (and SupCE-crop) epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=15, help="CAMContrast and SimCLR-crop epochs")
    parser.add_argument("--transfer-epochs", type=int, default=6)
    parser.add_argument("--demo-images", type=int, nargs=3, default=[120, 20, 40], metavar=("ALL", "VAL", "TEST"),
                        help="demo set size: all images, of which validation and test")
    parser.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                        help="only print the tables of results.json files from earlier runs (e.g. one per seed)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels the demo images are resized to")
    parser.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 48], help="encoder widths")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--transfer-epoch-length", type=int, default=8,
                        help="optimizer steps per transfer epoch, the same at every label fraction")
    args = parser.parse_args()
    if args.merge:
        merged = {}
        for path in args.merge:
            merged.update({int(seed): result for seed, result in json.loads(Path(path).read_text()).items()})
        print(tables(merged, args.fractions))
        return
    if not args.work_dir:
        parser.error("--work-dir is required (except with --merge)")
    logging.getLogger().setLevel(logging.WARNING)
    work_dir = Path(args.work_dir).resolve()
    features = list(args.features)
    # A decoder mirroring the encoder: one entry per stage plus a full-resolution block.
    decoder = [features[-1]] + features[-2::-1] + [features[0]]
    common = {"dataset_dir": args.dataset_dir, "num_epochs": args.epochs, "image_size": args.image_size,
              "features": features, "decoder_features": decoder, "batch_size": args.batch_size,
              "demo_images": args.demo_images[0], "demo_validation_images": args.demo_images[1],
              "demo_test_images": args.demo_images[2]}
    all_results = {}
    for seed in args.seeds:
        started = time.perf_counter()
        all_results[seed] = run_seed(work_dir, seed, common, args.pretrain_epochs, args.transfer_epochs,
                                     args.transfer_epoch_length, args.fractions)
        print(f"seed {seed} done in {time.perf_counter() - started:.0f} s", flush=True)
        (work_dir / "results.json").write_text(json.dumps(all_results, indent=1))
    print(tables(all_results, args.fractions))


if __name__ == "__main__":
    main()
