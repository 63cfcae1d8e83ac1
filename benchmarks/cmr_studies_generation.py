"""What the CMR phantom studies of the ``cmr_video_text`` bundle cost to make and to hold, measured in one run.

1. **Rendering one study** (every series of ``SERIES_LAYOUT``, ``--cine-frames`` cine frames, ``--lge-slices`` LGE
   slices, ``--matrix`` pixels per side) with torch on one thread against torch's default thread count: median
   seconds per study over ``--repeats`` studies, and the ratio.
2. **Writing ``--studies`` studies** with ``write_cmr_studies`` (what the bundle does once, then reuses): seconds,
   seconds per study, folder size in MB, and the peak resident memory of this process in MB.
3. **Holding the training split in memory** as ``CMRVideoTextDataset`` does (cine + LGE frames at the matrix):
   MB for the split's studies.

Typical use::

    PYTHONPATH=. python benchmarks/cmr_studies_generation.py
    PYTHONPATH=. python benchmarks/cmr_studies_generation.py --studies 500
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mri_ssl.data.cardiac.cmr_studies import anatomy_for_label, load_cmr_manifest, render_cmr_series, write_cmr_studies
from mri_ssl.data.cardiac.video_dataset import load_study_frames, split_studies


def seconds_per_study(threads: int, repeats: int, cine_frames: int, lge_slices: int, matrix: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for index in range(repeats):
            rng = np.random.default_rng([0, index])
            start = time.perf_counter()
            render_cmr_series(anatomy_for_label("scar", rng), rng, cine_frames, lge_slices, matrix)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cine-frames", type=int, default=16)
    parser.add_argument("--lge-slices", type=int, default=4)
    parser.add_argument("--matrix", type=int, default=48)
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    one = seconds_per_study(1, args.repeats, args.cine_frames, args.lge_slices, args.matrix)
    many = seconds_per_study(default_threads, args.repeats, args.cine_frames, args.lge_slices, args.matrix)
    print(f"render one study: {one:.3f} s on 1 thread, {many:.3f} s on {default_threads} threads "
          f"(ratio {many / one:.2f})")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_cmr_studies(folder, args.studies, seed=0, cine_frames=args.cine_frames, lge_slices=args.lge_slices,
                          matrix=args.matrix, progress=False)
        seconds = time.perf_counter() - start
        size_mb = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2 ** 20
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"write {args.studies} studies: {seconds:.1f} s ({seconds / args.studies:.3f} s per study), "
              f"{size_mb:.1f} MB on disk, peak resident memory {peak_mb:.0f} MB")
        manifest = load_cmr_manifest(folder)
        training = split_studies(manifest, "training")
        held_mb = sum(load_study_frames(folder, s, image_size=args.matrix).numel() * 4 for s in training) / 2 ** 20
        print(f"training split in memory: {len(training)} studies, {held_mb:.1f} MB of frames")


if __name__ == "__main__":
    main()
