"""Images per second of SimSiam pretraining for the cardiac bundle's CPU demo model (and any other size).

What it measures, on random 84 x 84 images in batches of ``--batch`` (the images a data loader would deliver):

* **views**: ``SimSiamViewPair(images)``, the two augmented views of every image (one batched grid_sample);
* **per-image MONAI views**: the same augmentations as MONAI's per-image transforms (RandFlip x2, RandRotate,
  RandZoom, Rand2DElastic, RandScaleIntensity, RandShiftIntensity, RandAdjustContrast), image by image, the way
  they would run without batching, for the ratio that justified writing the batched version;
* **step**: one ``SimSiamTrainer`` iteration with pre-made views: forward of both views through ViT + projector +
  predictor, symmetric negative cosine, backward, SGD step, collapse-indicator bookkeeping;
* **total**: views + step, the whole training iteration.

Images per second = batch size / median seconds (each image gives two views). Rounds interleave the measurements,
so load from other processes hits them alike; compare the ratios on a shared machine. Typical use::

    PYTHONPATH=. python benchmarks/simsiam.py
    PYTHONPATH=. python benchmarks/simsiam.py --batch 64 --rounds 10 --threads 2
    PYTHONPATH=. python benchmarks/simsiam.py --model paper --batch 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from mri_ssl.engines import SimSiamTrainer, simsiam_learning_rate, simsiam_parameter_groups
from mri_ssl.losses import SimSiamLoss
from mri_ssl.networks import SimSiamModel
from mri_ssl.transforms import SimSiamViewPair

CPU_DEMO = Path(__file__).resolve().parents[1] / "bundles" / "cardiac_sequence_classification" / "configs" / \
    "cpu_demo.json"
PAPER = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12, "projection_dim": 2048,
         "predictor_hidden": 512}


def model_config(name: str) -> dict:
    if name == "paper":
        return dict(PAPER)
    demo = json.loads(CPU_DEMO.read_text())
    return {key: demo[key] for key in PAPER}


def monai_per_image_views(images: torch.Tensor, transform) -> dict:
    return {f"view{k}": torch.stack([torch.as_tensor(transform(image)) for image in images]) for k in (1, 2)}


def monai_transform():
    from monai.transforms import (Compose, Rand2DElastic, RandAdjustContrast, RandFlip, RandRotate,
                                  RandScaleIntensity, RandShiftIntensity, RandZoom)

    return Compose([
        RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1),
        RandRotate(range_x=math.radians(20), prob=0.8, keep_size=True, padding_mode="zeros"),
        RandZoom(prob=0.5, min_zoom=0.85, max_zoom=1.15, keep_size=True, padding_mode="constant"),
        Rand2DElastic(spacing=(20, 20), magnitude_range=(1, 3), prob=0.5, padding_mode="zeros"),
        RandScaleIntensity(factors=0.2, prob=0.8), RandShiftIntensity(offsets=0.1, prob=0.8),
        RandAdjustContrast(prob=0.8, gamma=(0.7, 1.5)),
    ]).set_random_state(0)


class PremadeViews:
    """A view pair that hands back views made beforehand, so the step is timed without augmentation."""

    def __init__(self, views):
        self.views = views

    def __call__(self, images):
        return self.views


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "paper"], default="demo", help="cpu_demo.json sizes or ViT-B")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (cpu_demo pretrain batch: 32)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-monai", action="store_true", help="do not time the per-image MONAI views")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = model_config(args.model)
    torch.manual_seed(0)
    model = SimSiamModel(encoder_config={key: config[key] for key in ("hidden_size", "mlp_dim", "num_layers",
                                                                      "num_heads")},
                         projection_dim=config["projection_dim"], predictor_hidden=config["predictor_hidden"])
    model = model.to(device)
    optimizer = torch.optim.SGD(simsiam_parameter_groups(model), lr=simsiam_learning_rate(args.batch), momentum=0.9,
                                weight_decay=1e-4)
    images = torch.rand(args.batch, 1, 84, 84, device=device)
    view_pair = SimSiamViewPair().set_random_state(0)
    views = view_pair(images)
    trainer = SimSiamTrainer(device, 1, [{"image": images}], model, optimizer, PremadeViews(views), SimSiamLoss(),
                             seed=None)
    trainer.state.device = device  # what the engine sets on a run; the iteration reads it for autocast
    batch = {"image": images}
    transform = None if args.skip_monai else monai_transform()
    times = {"views": [], "monai views": [], "step": [], "total": []}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for round_index in range(args.rounds + 1):
        view_time = timed(lambda: (view_pair(images), sync()))
        step_time = timed(lambda: (trainer._iteration(trainer, batch), sync()))
        monai_time = timed(lambda: monai_per_image_views(images.cpu(), transform)) if transform else None
        if round_index == 0:
            continue  # warm-up
        times["views"].append(view_time)
        times["step"].append(step_time)
        times["total"].append(view_time + step_time)
        if monai_time is not None:
            times["monai views"].append(monai_time)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"SimSiam pretraining, {args.model} model ({parameters / 1e6:.2f} M parameters, ViT {config['num_layers']} "
          f"layers x {config['hidden_size']}, patch 12 on 84 x 84), batch {args.batch}, device {device}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds (median, min)")
    medians = {}
    for name, values in times.items():
        if not values:
            continue
        medians[name] = statistics.median(values)
        print(f"  {name:12s} {medians[name] * 1000:9.1f} ms  (min {min(values) * 1000:8.1f} ms)  "
              f"{args.batch / medians[name]:8.1f} images/s")
    print(f"  training throughput: {args.batch / medians['total']:.1f} images/s (views are "
          f"{medians['views'] / medians['total']:.0%} of an iteration)")
    if "monai views" in medians:
        print(f"  batched views vs per-image MONAI views: {medians['monai views'] / medians['views']:.1f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
