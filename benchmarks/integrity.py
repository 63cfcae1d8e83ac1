"""What the data checks and the crash-safe checkpoint cost, as medians and ratios measured in the same run.

1. **Reading one volume** of ``--size`` voxels (default 197 x 233 x 189, the paper's 1 mm MNI grid, smooth float32
   values as a real image compresses): ``read_nifti`` (every check, the whole gzip stream with its CRC) against
   nibabel alone (``nib.load`` + ``np.asarray(dataobj, float32)`` copied into memory), .nii.gz and .nii. Seconds
   (median of ``--repeats``) and the ratio checked / nibabel.
2. **Saving one checkpoint** of about ``--checkpoint-mb`` MB: ``save_checkpoint`` (temporary file in the same folder,
   fsync of the file and of the folder, rename) against a bare ``torch.save`` to the final name. Seconds and ratio.

Typical use::

    PYTHONPATH=. python benchmarks/integrity.py
    PYTHONPATH=. python benchmarks/integrity.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from mri_ssl.engines import save_checkpoint
from mri_ssl.io.images import read_nifti


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()  # warm the page cache and allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=[197, 233, 189], help="volume shape in voxels")
    parser.add_argument("--checkpoint-mb", type=float, default=100.0, help="checkpoint size in MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small volume and checkpoint, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.size, args.checkpoint_mb, args.repeats = [64, 64, 64], 5.0, 1

    rng = np.random.default_rng(0)
    volume = gaussian_filter(rng.standard_normal(args.size).astype(np.float32), 2.0) * 100 + 500
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        print(f"volume {tuple(args.size)} float32, median of {args.repeats}")
        for suffix in (".nii.gz", ".nii"):
            path = folder / f"volume{suffix}"
            nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
            checked = median_seconds(lambda: read_nifti(path), args.repeats)
            # np.array copies: an uncompressed file is memory-mapped, and asarray would read nothing.
            plain = median_seconds(lambda: np.array(np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)),
                                   args.repeats)
            print(f"  {suffix:7s} read_nifti {checked:.3f} s   nibabel {plain:.3f} s   ratio {checked / plain:.2f}   "
                  f"({path.stat().st_size / 1e6:.1f} MB on disk)")

        values = int(args.checkpoint_mb * 1e6 / 4)
        payload = {"network": {"weight": torch.randn(values)}, "epoch": 1, "iteration": 10}
        atomic = median_seconds(lambda: save_checkpoint(payload, folder / "latest.pt"), args.repeats)
        bare = median_seconds(lambda: torch.save(payload, folder / "bare.pt"), args.repeats)
        print(f"checkpoint {args.checkpoint_mb:.0f} MB, median of {args.repeats}")
        print(f"  save_checkpoint (temp + fsync + rename) {atomic:.3f} s   torch.save {bare:.3f} s   "
              f"ratio {atomic / bare:.2f}")


if __name__ == "__main__":
    main()
