"""Milliseconds per training crop of the mri_segmentation bundle: class-balanced crop centres listed once per cached
image, against listing them at every crop; and one training step of the network, for scale.

What it measures, with the bundle's own config (``configs/train.json`` + ``configs/cpu_demo.json`` by default, i.e.
the CPU demo's 32^3 crops of the 2 mm phantom) and its own transforms, one process:

1. **listed once** (the bundle's pipeline): the cached training item carries each class's voxel indices
   (``ClassesToIndicesd`` in ``train#preprocessing``, at most ``crop_centres_per_class`` per class), and
   ``RandCropByLabelClassesd`` draws the crop centre from them. Timed: the dataset's ``__getitem__`` (the cache copy)
   plus ``train#augmentation`` (crop, affine, bias field, intensity, noise).
2. **listed per crop** (before): the same item without the listed indices, so the crop rescans the whole label map
   for every class, as MONAI does when ``indices_key`` is absent. Same transforms otherwise.
3. **step**: one training step of the bundle's network, loss and optimizer on a batch of ``batch_size`` crops
   (forward, backward, optimizer step), to show what share of a step the data path is with one data-loading process
   (``num_workers`` 0, as the demo runs on 2 cores).

The variants are interleaved round by round and reported as medians with their ratio, so load from other processes
hits both alike. The phantom is written to ``--data`` on first use (about a minute). Typical use::

    PYTHONPATH=. python benchmarks/segmentation_crops.py
    PYTHONPATH=. python benchmarks/segmentation_crops.py --threads 1 --repeats 40
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mri_segmentation"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["train.json", "cpu_demo.json"],
                        help="the bundle's config files, in order")
    parser.add_argument("--data", default="/tmp/mri_ssl_benchmark_segmentation",
                        help="folder of the embedded phantom (written on first use)")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args(argv)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = ConfigParser()
    config.read_config([str(BUNDLE / "configs" / name) for name in args.configs])
    config.update({"bundle_root": str(BUNDLE), "demo_data_dir": args.data, "progress_bar": False, "num_workers": 0})
    dataset = config.get_parsed_content("train#dataset")
    augmentation = config.get_parsed_content("train#augmentation")
    listed_key = config.get_parsed_content("label_key") + config.get_parsed_content("crop_indices_postfix")
    network, loss, optimizer = (config.get_parsed_content(name) for name in ("network", "loss", "optimizer"))
    batch_size = config.get_parsed_content("batch_size")

    def listed_once(index: int) -> dict:
        return augmentation(dataset[index])[0]

    def listed_per_crop(index: int) -> dict:
        item = dict(dataset[index])  # a shallow copy: the cached item itself must keep its list
        del item[listed_key]
        return augmentation(item)[0]

    def step(index: int) -> None:
        crops = [listed_once((index + k) % len(dataset)) for k in range(batch_size)]
        images = torch.stack([torch.as_tensor(c["image"]) for c in crops])
        labels = torch.stack([torch.as_tensor(c["label"]) for c in crops])
        network.train()
        optimizer.zero_grad()
        loss(network(images), labels).backward()
        optimizer.step()

    variants = {"listed once": listed_once, "listed per crop": listed_per_crop}
    times: dict[str, list[float]] = {name: [] for name in variants}
    step_times: list[float] = []
    for function in (*variants.values(), step):  # warm-up: allocator, first-call setup
        function(0)
    for round_index in range(args.repeats):
        index = round_index % len(dataset)
        for name, function in variants.items():
            start = time.perf_counter()
            function(index)
            times[name].append(time.perf_counter() - start)
        if round_index % 3 == 0:  # a step costs several crops; time a third as many
            start = time.perf_counter()
            step(index)
            step_times.append(time.perf_counter() - start - batch_size * times["listed once"][-1])

    image_shape = tuple(dataset[0]["image"].shape[1:])
    counts = [len(indices) for indices in dataset[0][listed_key]]
    print("mri_segmentation training crops, configs", " + ".join(args.configs))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {len(dataset)} cached training images of "
          f"{image_shape} voxels, crop {config.get_parsed_content('patch_size')}, batch {batch_size}; listed centres "
          f"per class in the first image: {counts}")
    print(f"{'variant':18s} {'median ms per crop':>18s}")
    for name, values in times.items():
        print(f"{name:18s} {median_ms(values):18.1f}")
    once, per_crop = median_ms(times["listed once"]), median_ms(times["listed per crop"])
    network_ms = median_ms(step_times)
    print(f"ratio listed per crop / listed once: {per_crop / once:.1f}x (median of {args.repeats} interleaved rounds)")
    print(f"one training step without its data (forward, backward, optimizer; median of {len(step_times)}): "
          f"{network_ms:.1f} ms; the batch's crops take {batch_size * once:.1f} ms listed once against "
          f"{batch_size * per_crop:.1f} ms listed per crop, i.e. "
          f"{batch_size * once / (network_ms + batch_size * once):.0%} against "
          f"{batch_size * per_crop / (network_ms + batch_size * per_crop):.0%} of a step with one process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
