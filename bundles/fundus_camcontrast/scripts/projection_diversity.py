"""How different are the projections of the image tower and of the heatmap tower? A collapse diagnostic.

Builds the stage-2 model of ``configs/pretrain.json`` (+ any overrides) as a fresh initialisation per seed, or loads
``--checkpoint`` (a pretraining checkpoint, e.g. models/pretrain_camcontrast/final.pt), takes the first training
batch of the crops datalist and prints, per tower, the mean pairwise cosine similarity of the projections and the
std over the batch of the L2-normalised projections (healthy near 1/sqrt(128) = 0.088; 0 when every input maps to
one vector), the mean cosine of the positive image-heatmap pairs, and the NT-Xent loss of the batch next to
log(2B - 1), the loss of a fully collapsed batch. Run from the bundle folder after generate_heatmaps.json::

    python scripts/projection_diversity.py --overrides configs/cpu_demo.json --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    similarity = z @ z.T
    off_diagonal = ~torch.eye(len(z), dtype=torch.bool)
    return float(similarity[off_diagonal].mean())


def diversity(parser, seed: int, checkpoint: str | None) -> dict:
    from mri_ssl.engines import load_checkpoint

    parser.update({"seed": seed})
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network", lazy=False)
    if checkpoint:
        network.load_state_dict(load_checkpoint(checkpoint)["network"])
    batch = next(iter(parser.get_parsed_content("train#dataloader", lazy=False)))
    network.train()  # batch statistics, as in training
    with torch.no_grad():
        output = network(batch["image"].float(), batch["heatmap"].float())
        images = F.normalize(output["projection"].float(), dim=1)
        heatmaps = F.normalize(output["heatmap_projection"].float(), dim=1)
        loss = parser.get_parsed_content("loss", lazy=False)(output["projection"], output["heatmap_projection"])
    return {"seed": seed, "batch": len(images),
            "image_cosine": mean_pairwise_cosine(images), "heatmap_cosine": mean_pairwise_cosine(heatmaps),
            "positive_cosine": float((images * heatmaps).sum(dim=1).mean()),
            "image_std": float(images.std(dim=0).mean()), "heatmap_std": float(heatmaps.std(dim=0).mean()),
            "loss": float(loss), "collapsed_loss": math.log(2 * len(images) - 1)}


def main() -> None:
    from monai.bundle import ConfigParser

    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    arguments.add_argument("--overrides", nargs="*", default=[], help="config files after configs/pretrain.json")
    arguments.add_argument("--set", default="{}", help="JSON of further overrides, e.g. '{\"batch_size\": 16}'")
    arguments.add_argument("--bundle-root", default=".")
    arguments.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    arguments.add_argument("--checkpoint", default=None, help="load these weights instead of a fresh initialisation")
    args = arguments.parse_args()
    for seed in args.seeds:
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / "pretrain.json"), *args.overrides])
        parser.update({"bundle_root": args.bundle_root, "progress_bar": False, "num_workers": 0,
                       **json.loads(args.set)})
        row = diversity(parser, seed, args.checkpoint)
        print(f"seed {row['seed']} (batch {row['batch']}): mean cosine image-image {row['image_cosine']:.4f}, "
              f"heatmap-heatmap {row['heatmap_cosine']:.4f}, positive image-heatmap {row['positive_cosine']:.4f}; "
              f"projection std image {row['image_std']:.4f}, heatmap {row['heatmap_std']:.4f}; "
              f"NT-Xent {row['loss']:.3f} (collapsed: log(2B-1) = {row['collapsed_loss']:.3f})", flush=True)


if __name__ == "__main__":
    main()
