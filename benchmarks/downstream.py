"""Seconds for the downstream evaluation of one brain volume on the CPU: sliding-window inference and scoring.

What it measures, for one volume of ``--size`` voxels (default 197 x 233 x 189, the paper's 1 mm MNI grid):

1. **inference**: ``monai.inferers.sliding_window_inference`` (roi 96^3, sw_batch_size 2, overlap 0.25) of the
   paper-size ``FrozenEncoderUNet`` (random encoder with features (64, 128, 256, 512, 768), decoder
   (768, 512, 256, 128, 64, 32), 4 output classes) in eval mode under ``torch.no_grad``, on a z-scored random image.
   The first run is reported on its own (it pays for allocator growth and one-off setup); then the median of
   ``--repeats`` runs.
2. **scoring**: ``segmentation_case_scores`` (Dice, HD95 in mm and status for GM / WM / CSF) on a pair of blobby
   4-class label maps: smoothed Gaussian noise inside an ellipsoidal "brain", cut at its quantiles into CSF / GM / WM;
   the prediction cuts the same noise plus a little independent smoothed noise, so boundaries move by a voxel or two
   as a decent network's would. Median of ``--repeats`` runs, first run separately.
3. **HD95 of one class** (GM, the one with the most boundary) with ``hd95_mm`` on the whole volume against the same
   call on the bounding box of both masks padded by one voxel, as ``score_structure`` crops: seconds, the ratio, and
   the two HD95 values (they must be equal); the same for a lesion-size ball, where the crop matters most.

``--quick`` is a smoke run: a small volume, a slim network (encoder (8, 16, 24, 32, 48)) and a 64^3 roi, in well
under a minute. Typical use::

    PYTHONPATH=. python benchmarks/downstream.py
    PYTHONPATH=. python benchmarks/downstream.py --repeats 5 --threads 2
    PYTHONPATH=. python benchmarks/downstream.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import monai
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy.ndimage import gaussian_filter

from mri_ssl.metrics import hd95_mm, segmentation_case_scores
from mri_ssl.metrics.segmentation import bounding_box
from mri_ssl.networks import PAPER_DECODER_FEATURES, PAPER_FEATURES, FrozenEncoderUNet

TISSUE_CLASSES = {0: "background", 1: "csf", 2: "gm", 3: "wm"}
SPACING_MM = (1.0, 1.0, 1.0)
PAPER_ROI = 96
QUICK_SIZE = (80, 96, 72)
QUICK_ROI = 64
QUICK_FEATURES = (8, 16, 24, 32, 48)
QUICK_DECODER_FEATURES = (48, 32, 24, 16, 8, 8)
SW_BATCH_SIZE = 2
OVERLAP = 0.25


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds for sliding-window inference of the paper-size FrozenEncoderUNet and for Dice / HD95 "
        "scoring of one brain volume on the CPU.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first (median reported)")
    parser.add_argument("--size", type=int, nargs=3, default=[197, 233, 189], metavar=("X", "Y", "Z"),
                        help="volume size in voxels (1 mm spacing)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: size {QUICK_SIZE}, roi {QUICK_ROI}^3, slim encoder {QUICK_FEATURES}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.quick:
        args.size = list(QUICK_SIZE)
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


def time_runs(function: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(seconds of the first call, median seconds of ``repeats`` further calls, the last result)."""
    start = time.perf_counter()
    result = function()
    first = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return first, statistics.median(seconds), result


def make_network(quick: bool) -> FrozenEncoderUNet:
    """The network with a random encoder (``encoder=None``): weights do not change its speed."""
    encoder_features = QUICK_FEATURES if quick else PAPER_FEATURES
    decoder_features = QUICK_DECODER_FEATURES if quick else PAPER_DECODER_FEATURES
    network = FrozenEncoderUNet(encoder=None, out_channels=len(TISSUE_CLASSES), decoder_features=decoder_features,
                                encoder_config={"features": encoder_features})
    return network.eval()


def smooth_noise(shape, sigma_voxels: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed to blobs about ``sigma_voxels`` across, scaled to unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_voxels)
    return field / field.std()


def make_label_pair(shape, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label): 4-class maps of blobby CSF / GM / WM in an ellipsoid; the prediction a perturbed copy."""
    grid = np.indices(shape, dtype=np.float32)
    centre, radii = [(n - 1) / 2 for n in shape], [0.4 * n for n in shape]
    brain = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    tissue = smooth_noise(shape, 4.0, rng)
    perturbed = tissue + 0.15 * smooth_noise(shape, 2.0, rng)
    # Cut points that give roughly 20 % CSF, 40 % GM, 40 % WM of the brain.
    cuts = np.quantile(tissue[brain], [0.2, 0.6])

    def classes(field: np.ndarray) -> np.ndarray:
        return np.where(brain, 1 + np.digitize(field, cuts), 0).astype(np.int64)

    return classes(perturbed), classes(tissue)


def make_lesion_pair(shape) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label): two overlapping balls of about 6 mm radius, offset by one voxel on two axes."""
    grid = np.indices(shape)
    centre = [n // 2 for n in shape]
    label = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 6.0 ** 2
    moved = [centre[0] + 1, centre[1], centre[2] + 1]
    prediction = sum((g - c) ** 2 for g, c in zip(grid, moved)) <= 5.5 ** 2
    return prediction, label


NAME_WIDTH = 66


def table_row(name: str, first_s: float | None, median_s: float) -> None:
    first = "" if first_s is None else f"{first_s:.3f}"
    say(f"{name:<{NAME_WIDTH}}  {first:>8}  {median_s:8.3f}")


def benchmark_scoring(shape, repeats: int, rng: np.random.Generator) -> None:
    prediction, label = make_label_pair(shape, rng)
    first_s, median_s, row = time_runs(
        lambda: segmentation_case_scores(prediction, label, TISSUE_CLASSES, SPACING_MM), repeats)
    table_row("segmentation_case_scores, 3 classes", first_s, median_s)
    gm_prediction, gm_label = prediction == 2, label == 2
    box = bounding_box(gm_prediction, gm_label, margin=1)
    _, whole_s, whole_hd95 = time_runs(lambda: hd95_mm(gm_prediction, gm_label, SPACING_MM), repeats)
    table_row("hd95_mm of GM, whole volume", None, whole_s)
    _, box_s, box_hd95 = time_runs(lambda: hd95_mm(gm_prediction[box], gm_label[box], SPACING_MM), repeats)
    table_row("hd95_mm of GM, bounding box + 1 voxel", None, box_s)
    box_fraction = np.prod([s.stop - s.start for s in box]) / np.prod(shape)
    say(f"  GM HD95 whole volume {whole_hd95:.3f} mm, bounding box {box_hd95:.3f} mm; the box holds "
        f"{box_fraction:.0%} of the voxels; whole / box time {whole_s / box_s:.2f}")
    # A lesion-size structure is where the crop pays: MONAI crops to the foreground itself, but only after converting
    # the whole volume to float tensors.
    lesion_prediction, lesion_label = make_lesion_pair(shape)
    lesion_box = bounding_box(lesion_prediction, lesion_label, margin=1)
    _, whole_s, whole_hd95 = time_runs(lambda: hd95_mm(lesion_prediction, lesion_label, SPACING_MM), repeats)
    table_row("hd95_mm of a 6 mm-radius lesion, whole volume", None, whole_s)
    _, box_s, box_hd95 = time_runs(
        lambda: hd95_mm(lesion_prediction[lesion_box], lesion_label[lesion_box], SPACING_MM), repeats)
    table_row("hd95_mm of a 6 mm-radius lesion, bounding box + 1 voxel", None, box_s)
    say(f"  lesion HD95 whole volume {whole_hd95:.3f} mm, bounding box {box_hd95:.3f} mm; "
        f"whole / box time {whole_s / box_s:.2f}")
    say("  case scores: " + ", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                                      for key, value in row.items() if not key.startswith("status_")))


def benchmark_inference(shape, repeats: int, quick: bool) -> None:
    roi = QUICK_ROI if quick else PAPER_ROI
    network = make_network(quick)
    image = torch.randn(1, 1, *shape)

    def infer() -> torch.Tensor:
        with torch.no_grad():
            return sliding_window_inference(image, roi_size=(roi,) * 3, sw_batch_size=SW_BATCH_SIZE, predictor=network,
                                            overlap=OVERLAP)

    first_s, median_s, logits = time_runs(infer, repeats)
    if logits.shape != (1, len(TISSUE_CLASSES), *shape):
        raise RuntimeError(f"unexpected output shape {tuple(logits.shape)}")
    features = QUICK_FEATURES if quick else PAPER_FEATURES
    table_row(f"sliding-window inference, encoder {features}, roi {roi}^3", first_s, median_s)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = tuple(args.size)
    say(f"torch {torch.__version__}, monai {monai.__version__}, threads {torch.get_num_threads()}, "
        f"volume {shape} at {SPACING_MM} mm, repeats {args.repeats}{', quick' if args.quick else ''}")
    say()
    say(f"{'measurement':<{NAME_WIDTH}}  {'first s':>8}  {'median s':>8}")
    # Scoring first and each line as soon as it is measured: on a CPU the paper-size network takes minutes per run.
    benchmark_scoring(shape, args.repeats, np.random.default_rng(args.seed))
    benchmark_inference(shape, args.repeats, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
