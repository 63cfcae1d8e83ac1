"""Seconds per pretraining step: making the two views (data) vs the model step, and the CPU demo bundle's peak memory.

What it measures, for the paper-size model at 96^3 and for the CPU demo model of ``bundles/mri_ssl_pretrain``:

* **data**: one call of ``ContrastiveViewPair(mode, crop_size, map_names, fused)(maps)``, the work the trainer does
  per batch before the forward pass (random affine crop of the maps, simulation of the sequences, bias field, Gibbs
  ringing, Rician noise, cuboid dropout, z-scoring, for both views of every item). The maps are MNI152 phantom
  subjects (``mni152_phantom`` with a random generator per item; 1 mm for the paper model, 2 mm for the CPU demo),
  pre-cropped as the bundle's data loader does (``SpatialPadd`` + ``RandSpatialCropd`` to ``precrop_size`` =
  1.25 x crop: 120^3 and 60^3), stacked to ``(B, 4, ...)`` (pd, r1, r2s, mt) on the device.
* **model**: one ``ContrastiveTrainer`` iteration with the views already made: the trainer's own ``_iteration``
  (forward of cat(view1, view2), NT-Xent on the projections, L1 reconstruction loss, the finiteness check, backward,
  gradient clipping at 12, AdamW step, the projection-std bookkeeping; autocast + GradScaler on CUDA as the bundle
  does) with a view pair that hands back a pre-made pair. The model step's tensors have the same shapes in every
  view mode, so it is timed once per configuration; the data time is timed per mode.
* **layouts**: the same model step with the network's convolutions contiguous (NCDHW) instead of channels-last
  (NDHWC, the bundle's ``ContrastiveReconstructionModel`` default), same weights and views, timed in the same rounds
  (``--no-compare-layouts`` skips it); the ratio channels-last / contiguous is printed.
* **ratio** data / model, and PASS/MISS against the goal "data work at most 25 % of the model step for the
  paper-size model on the same device" (information only; the exit code is 0 either way).
* optionally a **breakdown** of the data time into its parts (map validation, protocol draws, spatial resampling,
  simulation, each MONAI corruption transform, the rest), from separate untimed-in-the-table calls.
* the **CPU demo bundle** run as a user runs it (``python -m monai.bundle run`` with ``train.json`` +
  ``cpu_demo.json``, outputs and demo data in a temporary directory, forced onto the CPU), in a subprocess: its
  wall time, CPU time and peak resident memory (``os.wait4`` rusage of that child, taken by a small launcher
  process so this benchmark's own high-water mark does not leak into it), against the 6 GB goal.
  The first run writes the demo data (6 subjects at 2 mm), which is included, as for a first-time user.

Timings interleave the data calls and model steps round by round, so a burst of load from another process hits
both alike; medians and ratios come from the same run. On a shared machine compare ratios, not absolute times.

On a CPU the paper-size step is very slow (about two minutes per step at batch 2 on 2 cores, and roughly 8 GB of
activations per item), so on CPU the paper model defaults to batch 2 and one timed model step after the warm-up
step; the output says which batch and how many steps were used. Typical use::

    PYTHONPATH=. python benchmarks/pretrain_pipeline.py
    PYTHONPATH=. python benchmarks/pretrain_pipeline.py --configs demo --modes base seqaug seqinv
    PYTHONPATH=. python benchmarks/pretrain_pipeline.py --device cuda --paper-batch 8 --skip-bundle-run
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundles" / "mri_ssl_pretrain"
MAP_KEYS = ("pd", "r1", "r2s", "mt")  # train.json's map_keys, in channel order
VIEW_MODE_NAMES = ("base", "seqaug", "seqinv")
DATA_TO_MODEL_GOAL = 0.25  # paper-size model: data time at most this fraction of the model step
DEMO_PEAK_MEMORY_GOAL_GB = 6.0  # CPU demo bundle run, GB = 10^9 bytes


@dataclass
class ModelConfig:
    """One row group of the table: the bundle's network, crop and optimiser settings plus the input resolution."""

    name: str
    features: tuple[int, ...]
    reconstruction_channels: tuple[int, ...]
    projection_hidden: int
    projection_dim: int
    dropout: float
    crop: int
    resolution_mm: float
    learning_rate: float
    weight_decay: float
    grad_clip_norm: float
    projection_batch_norm: bool = False
    temperature: float = 0.5
    reconstruction_weight: float = 1.0
    batch: int = 2
    data_repeats: int = 3
    model_repeats: int = 3
    goal: bool = False  # the 25 % goal applies to this configuration
    notes: list[str] = field(default_factory=list)

    @property
    def precrop(self) -> int:
        return int(round(self.crop * 1.25))  # train.json: precrop_size = round(1.25 * crop_size)


def bundle_values(*config_names: str) -> dict:
    """The top-level keys of the pretraining bundle's config files, later files overriding earlier ones."""
    import json

    values: dict = {}
    for name in config_names:
        values.update(json.loads((BUNDLE_ROOT / "configs" / name).read_text()))
    return values


def model_config_values(name: str, values: dict, goal: bool = False) -> dict:
    """``ModelConfig`` keyword arguments from a bundle config's values (so this benchmark times what it runs)."""
    return dict(name=name, features=tuple(values["features"]),
                reconstruction_channels=tuple(values["reconstruction_channels"]),
                projection_hidden=values["projection_hidden"], projection_dim=values["projection_dim"],
                projection_batch_norm=bool(values["projection_batch_norm"]), temperature=values["temperature"],
                dropout=values["dropout"], crop=values["crop_size"][0], resolution_mm=values["demo_resolution_mm"],
                learning_rate=values["learning_rate"], weight_decay=values["weight_decay"],
                grad_clip_norm=values["grad_clip_norm"], reconstruction_weight=values["reconstruction_weight"],
                goal=goal)


# bundles/mri_ssl_pretrain/configs/train.json (paper) and train.json + cpu_demo.json (demo).
PAPER_VALUES = bundle_values("train.json")
DEMO_VALUES = bundle_values("train.json", "cpu_demo.json")
PAPER = model_config_values("paper", PAPER_VALUES, goal=True)
DEMO = model_config_values("cpu demo", DEMO_VALUES)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds per pretraining step of mri_ssl_pretrain: view simulation + augmentation (data) vs "
        "forward + backward + AdamW step (model), for the paper-size model at 96^3 and the CPU demo model; plus the "
        "peak memory of a CPU demo bundle run. Prints a table; PASS/MISS against the goals is information only "
        "(exit code 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default=None,
                        help="device for the timings (default: cuda if available, else cpu)")
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=["demo", "paper"],
                        help="model configurations to time (demo runs first, so the process's peak memory after it "
                        "is the demo's own)")
    parser.add_argument("--modes", nargs="+", default=["seqinv"], choices=VIEW_MODE_NAMES, help="view modes to time")
    parser.add_argument("--paper-batch", type=int, default=None,
                        help="paper-model batch (the bundle uses 8; default 8 on CUDA, 2 on CPU where a step at 8 "
                        "would take many minutes and about 60 GB)")
    parser.add_argument("--demo-batch", type=int, default=DEMO_VALUES["batch_size"],
                        help="CPU-demo batch (cpu_demo.json's batch_size)")
    parser.add_argument("--compare-layouts", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the model step with the network's convolutions contiguous (NCDHW) instead "
                        "of channels-last (NDHWC, what the bundle uses), interleaved, and print the ratio")
    parser.add_argument("--paper-repeats", type=int, default=3,
                        help="timed data calls per mode for the paper model (and model steps on CUDA)")
    parser.add_argument("--paper-model-repeats", type=int, default=None,
                        help="timed paper-model steps (default: --paper-repeats on CUDA, 1 on CPU, where one step "
                        "takes about two minutes)")
    parser.add_argument("--demo-repeats", type=int, default=5, help="timed data calls and model steps for the demo")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed data calls (per mode) and model steps before the timed ones")
    parser.add_argument("--breakdown-repeats", type=int, default=3,
                        help="extra data calls per mode whose parts are timed separately (0 skips the breakdown)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                        help="simulate with the fused kernel (default: as the bundle, i.e. on CUDA only)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision in the model step (default: as the bundle, i.e. on CUDA only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phantom subjects, pre-crops and views")
    parser.add_argument("--skip-bundle-run", action="store_true", help="do not run the CPU demo bundle")
    parser.add_argument("--bundle-timeout", type=float, default=900.0,
                        help="seconds before the bundle run is killed")
    parser.add_argument("--bundle-work-dir", default=None,
                        help="directory for the bundle run's demo data, checkpoints and logs (kept; demo data "
                        "already there is reused). Default: a temporary directory, removed afterwards")
    args = parser.parse_args(argv)
    for name in ("paper_batch", "demo_batch"):
        value = getattr(args, name)
        if value is not None and value < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2 (NT-Xent needs negatives), got {value}")
    for name in ("paper_repeats", "demo_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.paper_model_repeats is not None and args.paper_model_repeats < 1:
        parser.error("--paper-model-repeats must be at least 1")
    if args.warmup < 0 or args.breakdown_repeats < 0:
        parser.error("--warmup and --breakdown-repeats must be >= 0")
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 10:
        return f"{seconds:.1f}"
    if seconds >= 1:
        return f"{seconds:.2f}"
    return f"{seconds:.3f}"


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    say(line)
    say("-" * len(line))
    for row in rows:
        say("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def memory_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def cpu_pressure() -> str | None:
    """Linux PSI: share of the last 10 / 60 s in which some runnable task waited for a CPU (other jobs' load)."""
    try:
        with open("/proc/pressure/cpu") as handle:
            fields = dict(item.split("=") for item in handle.readline().split()[1:])
        return f"{float(fields['avg10']):.0f}% / {float(fields['avg60']):.0f}%"
    except (OSError, KeyError, ValueError):
        return None


def machine_load(when: str) -> None:
    parts = []
    if hasattr(os, "getloadavg"):
        parts.append("load average (1/5/15 min) " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    pressure = cpu_pressure()
    if pressure:
        parts.append(f"CPU pressure, tasks waiting for a CPU (10/60 s) {pressure}")
    if parts:
        say(f"machine at {when}: " + "; ".join(parts))


def maxrss_bytes(ru_maxrss: int) -> int:
    """``ru_maxrss`` is KiB on Linux, bytes on macOS."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


def self_peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1e9


# ----------------------------------------------------------------------------------------------------------------
# Timing helpers


class Clock:
    """Wall-clock seconds of a callable, synchronising CUDA before and after so queued kernels are counted."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def time(self, fn, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.sync()
        return time.perf_counter() - start, result


class _TimedCall:
    """Stands in for a callable attribute (bound method or MONAI transform), adding its seconds to ``totals``."""

    def __init__(self, target, name: str, totals: dict, clock: Clock):
        self._target, self._name, self._totals, self._clock = target, name, totals, clock

    def __call__(self, *args, **kwargs):
        seconds, result = self._clock.time(self._target, *args, **kwargs)
        self._totals[self._name] = self._totals.get(self._name, 0.0) + seconds
        return result

    def __getattr__(self, name):
        return getattr(self._target, name)


BREAKDOWN_PARTS = {  # attribute of ContrastiveViewPair -> label
    "_check_input": "validate maps",
    "randomize": "draw protocols",
    "_spatial": "affine crop + flips",
    "_simulate": "simulate",
    "bias_field": "RandBiasField",
    "gibbs": "RandGibbsNoise",
    "rician": "RandRicianNoise",
    "dropout": "RandCoarseDropout",
}


def instrument(view_pair, clock: Clock) -> dict:
    """Time the parts of ``view_pair`` per call (instance attributes shadow the methods; library code untouched)."""
    totals: dict[str, float] = {}
    for attribute in BREAKDOWN_PARTS:
        setattr(view_pair, attribute, _TimedCall(getattr(view_pair, attribute), attribute, totals, clock))
    return totals


# ----------------------------------------------------------------------------------------------------------------
# Inputs, model, one configuration


def make_maps(config: ModelConfig, device, seed: int):
    """``(B, 4, P, P, P)`` float32 maps of B random MNI152 phantom subjects, pre-cropped like the bundle's loader."""
    import torch
    from monai.transforms import RandSpatialCrop, SpatialPad

    from mri_ssl.physics.phantom import mni152_phantom

    size = (config.precrop,) * 3
    pad = SpatialPad(spatial_size=size)
    crop = RandSpatialCrop(roi_size=size, random_size=False)
    crop.set_random_state(seed)
    items = []
    for index in range(config.batch):
        phantom = mni152_phantom(config.resolution_mm, generator=torch.Generator().manual_seed(seed + index))
        volume = torch.stack([phantom.maps[key] for key in MAP_KEYS]).float()
        volume = crop(pad(volume))
        items.append(volume.as_tensor() if hasattr(volume, "as_tensor") else volume)
        shape_full = tuple(phantom.maps["pd"].shape)
    return torch.stack(items).contiguous().to(device), shape_full


def make_trainer(config: ModelConfig, device, amp: bool, holder: dict, channels_last: bool = True):
    """The bundle's network, loss, AdamW and a ``ContrastiveTrainer`` whose view pair returns ``holder['pair']``.

    ``channels_last`` False keeps the convolutions in PyTorch's default contiguous layout (the layout comparison).
    """
    import torch

    from mri_ssl.engines.contrastive_trainer import ContrastiveTrainer
    from mri_ssl.losses.ntxent import NTXentLoss
    from mri_ssl.networks.pretrain_model import ContrastiveReconstructionModel

    network = ContrastiveReconstructionModel(
        spatial_dims=3, in_channels=1, features=config.features, dropout=config.dropout,
        projection_hidden=config.projection_hidden, projection_dim=config.projection_dim,
        reconstruction_channels=config.reconstruction_channels, reconstruction=config.reconstruction_weight > 0,
        projection_batch_norm=config.projection_batch_norm, channels_last=channels_last,
    ).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    trainer = ContrastiveTrainer(
        device=device, max_epochs=1, train_data_loader=[{}], network=network, optimizer=optimizer,
        view_pair=lambda inputs: holder["pair"], contrastive_loss=NTXentLoss(temperature=config.temperature),
        input_keys=("maps",), reconstruction_weight=config.reconstruction_weight, grad_clip_norm=config.grad_clip_norm,
        amp=amp, seed=None,
    )
    parameters = sum(p.numel() for p in network.parameters())
    return trainer, parameters


def run_config(config: ModelConfig, args, device, clock: Clock) -> dict:
    import torch

    from mri_ssl.transforms.views import ContrastiveViewPair

    result: dict = {"config": config, "modes": {}, "breakdown": {}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    start = time.perf_counter()
    maps, full_shape = make_maps(config, device, args.seed)
    result["maps_seconds"] = time.perf_counter() - start
    say(f"[{config.name}] maps: {config.batch} phantom subjects at {config.resolution_mm:g} mm {full_shape}, "
        f"pre-cropped to {config.precrop}^3 -> {tuple(maps.shape)} on {device} "
        f"({result['maps_seconds']:.1f} s to build, not timed below)")

    view_pairs = {}
    for mode in args.modes:
        view_pair = ContrastiveViewPair(mode=mode, crop_size=config.crop, map_names=MAP_KEYS, fused=args.fused)
        view_pair.set_random_state(seed=args.seed)
        view_pairs[mode] = view_pair

    holder: dict = {}
    trainer, parameters = make_trainer(config, device, args.amp, holder)
    result["parameters"] = parameters
    batch = {"maps": maps}

    def model_step():
        return trainer._iteration(trainer, batch)

    # The same network, initial weights and pair with contiguous convolutions: same-round times give the ratio.
    # Built under fork_rng so the global stream (and so what is timed after) is as without the comparison.
    contiguous_trainer = None
    if args.compare_layouts:
        with torch.random.fork_rng(devices=[]):
            contiguous_trainer, _ = make_trainer(config, device, args.amp, holder, channels_last=False)
        contiguous_trainer.network.load_state_dict(trainer.network.state_dict())

    def contiguous_model_step():
        return contiguous_trainer._iteration(contiguous_trainer, batch)

    # Warm-up: data calls per mode (the first also makes the pair the model steps use), then model steps.
    data_first: dict[str, float] = {}
    for mode, view_pair in view_pairs.items():
        for index in range(max(1, args.warmup)):
            seconds, pair = clock.time(view_pair, maps)
            if index == 0:
                data_first[mode] = seconds
            holder.setdefault("pair", pair)
    model_first = None
    for index in range(args.warmup):
        seconds, _ = clock.time(model_step)
        if index == 0:
            model_first = seconds
        say(f"[{config.name}] warm-up model step {index + 1}/{args.warmup}: {fmt_s(seconds)} s")
        if contiguous_trainer is not None:
            clock.time(contiguous_model_step)

    data_times: dict[str, list[float]] = {mode: [] for mode in view_pairs}
    model_times: list[float] = []
    contiguous_times: list[float] = []
    rounds = max(config.data_repeats, config.model_repeats)
    for round_index in range(rounds):
        for mode, view_pair in view_pairs.items():
            if round_index < config.data_repeats:
                seconds, _ = clock.time(view_pair, maps)
                data_times[mode].append(seconds)
        if round_index < config.model_repeats:
            # the two layouts take turns going first, so neither always runs on the other's warm caches
            contiguous_first = contiguous_trainer is not None and round_index % 2 == 1
            if contiguous_first:
                contiguous_times.append(clock.time(contiguous_model_step)[0])
            seconds, output = clock.time(model_step)
            model_times.append(seconds)
            result["last_loss"] = output.get("loss")
            if contiguous_trainer is not None and not contiguous_first:
                contiguous_times.append(clock.time(contiguous_model_step)[0])
        data_text = ", ".join(f"{m} {fmt_s(t[-1])}" for m, t in data_times.items() if len(t) > round_index)
        model_text = f", model {fmt_s(model_times[-1])}" if round_index < config.model_repeats else ""
        if contiguous_times and round_index < config.model_repeats:
            model_text += f" (contiguous {fmt_s(contiguous_times[-1])})"
        say(f"[{config.name}] round {round_index + 1}/{rounds}: data {data_text}{model_text} s")

    model_median = statistics.median(model_times)
    result["model"] = {"median": model_median, "first": model_first, "n": len(model_times),
                       "min": min(model_times), "max": max(model_times)}
    if contiguous_times:
        result["model_contiguous"] = {"median": statistics.median(contiguous_times), "n": len(contiguous_times)}
    for mode, times in data_times.items():
        median = statistics.median(times)
        result["modes"][mode] = {"median": median, "first": data_first[mode], "n": len(times), "min": min(times),
                                 "max": max(times), "ratio": median / model_median}

    if args.breakdown_repeats:
        for mode in view_pairs:
            view_pair = ContrastiveViewPair(mode=mode, crop_size=config.crop, map_names=MAP_KEYS, fused=args.fused)
            view_pair.set_random_state(seed=args.seed + 1)
            totals = instrument(view_pair, clock)
            per_call: dict[str, list[float]] = {}
            for _ in range(args.breakdown_repeats):
                totals.clear()
                seconds, _ = clock.time(view_pair, maps)
                for attribute in BREAKDOWN_PARTS:
                    per_call.setdefault(attribute, []).append(totals.get(attribute, 0.0))
                per_call.setdefault("_other", []).append(seconds - sum(totals.values()))
                per_call.setdefault("_total", []).append(seconds)
            result["breakdown"][mode] = {k: statistics.median(v) for k, v in per_call.items()}

    if device.type == "cuda":
        result["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        result["peak_memory_what"] = "CUDA max allocated"
    else:
        result["peak_memory_gb"] = self_peak_rss_gb()
        result["peak_memory_what"] = "this process's peak RSS so far"
    return result


# ----------------------------------------------------------------------------------------------------------------
# The CPU demo bundle, in a subprocess


# Runs the bundle and reports its rusage. A separate small launcher because Linux records the high-water RSS of the
# process that execs into a child's maxrss (subprocess vforks, so that is this benchmark, 16 GB after the paper
# model): measured directly, the child's peak would read as this process's peak. The launcher is small, so the
# bundle's ru_maxrss is the bundle's own (the launcher's ~10 MB is the floor).
LAUNCHER = r"""
import json, os, subprocess, sys, time
report, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
start = time.perf_counter()
process = subprocess.Popen(command)
timed_out = False
while True:
    pid, status, usage = os.wait4(process.pid, os.WNOHANG)
    if pid:
        break
    if time.perf_counter() - start > timeout:
        process.kill()
        timed_out = True
        pid, status, usage = os.wait4(process.pid, 0)
        break
    time.sleep(0.1)
with open(report, "w") as handle:
    json.dump({"wall_seconds": time.perf_counter() - start, "returncode": os.waitstatus_to_exitcode(status),
               "ru_maxrss": usage.ru_maxrss, "cpu_seconds": usage.ru_utime + usage.ru_stime,
               "timed_out": timed_out}, handle)
"""


def run_bundle(args) -> dict:
    """Run train.json + cpu_demo.json on the CPU; wall and CPU seconds and peak RSS from ``os.wait4``."""
    import json

    work_dir = Path(args.bundle_work_dir).resolve() if args.bundle_work_dir else Path(
        tempfile.mkdtemp(prefix="mri_ssl_pretrain_demo_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    configs = [str(BUNDLE_ROOT / "configs" / "train.json"), str(BUNDLE_ROOT / "configs" / "cpu_demo.json")]
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", "[" + ",".join(repr(c) for c in configs) + "]",
        "--bundle_root", str(BUNDLE_ROOT),
        "--ckpt_dir", str(work_dir / "models"),
        "--output_dir", str(work_dir / "logs"),
        "--demo_data_dir", str(work_dir / "demo_data"),
        # The CPU demo run, on the CPU even where CUDA exists (on a CPU-only machine these are the defaults).
        "--device", "$torch.device('cpu')", "--amp", "False", "--fused_simulator", "False",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    demo_data_existed = (work_dir / "demo_data" / "datalist.json").is_file()
    log_path = work_dir / "bundle_run.log"
    report_path = work_dir / "bundle_run_rusage.json"
    result = {"command": command, "work_dir": work_dir, "log": log_path, "timed_out": False,
              "demo_data_existed": demo_data_existed, "peak_rss_gb": None, "cpu_seconds": None}
    say(f"[bundle] running the CPU demo bundle in {work_dir} (log: {log_path.name}) ...")
    with open(log_path, "w") as log:
        start = time.perf_counter()
        if hasattr(os, "wait4"):
            launcher = [sys.executable, "-c", LAUNCHER, str(report_path), str(args.bundle_timeout)]
            process = subprocess.Popen(launcher + command, cwd=REPO_ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
            process.wait()  # the launcher enforces the timeout and always returns
            try:
                report = json.loads(report_path.read_text())
            except (OSError, ValueError):
                report = {"returncode": process.returncode, "timed_out": False}
            process.returncode = report["returncode"]
            result["timed_out"] = report["timed_out"]
            if "ru_maxrss" in report:
                result["peak_rss_gb"] = maxrss_bytes(report["ru_maxrss"]) / 1e9
                result["cpu_seconds"] = report["cpu_seconds"]
        else:  # no per-child rusage on this platform
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                process.wait(timeout=args.bundle_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                result["timed_out"] = True
        result["wall_seconds"] = time.perf_counter() - start
    result["returncode"] = process.returncode
    text = log_path.read_text(errors="replace").replace("\r", "\n")
    match = re.search(r"Engine run finished\. Time taken: (\d+):(\d+):([\d.]+)", text)
    result["engine_seconds"] = (int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
                                if match else None)
    result["wrote_demo_data"] = "demo subjects" in text
    epochs = re.findall(r"Epoch\[(\d+)\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", text)
    result["epoch_seconds"] = [int(h) * 3600 + int(m) * 60 + float(s) for _, h, m, s in epochs]
    if process.returncode != 0 or result["timed_out"]:
        tail = [line for line in text.splitlines() if line.strip()][-25:]
        result["tail"] = tail
    if not args.bundle_work_dir and process.returncode == 0 and not result["timed_out"]:
        shutil.rmtree(work_dir, ignore_errors=True)
        result["removed"] = True
    return result


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    import monai
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    if args.fused is None:
        args.fused = on_cuda  # train.json: fused_simulator = torch.cuda.is_available()
    if args.amp is None:
        args.amp = on_cuda  # train.json: amp = torch.cuda.is_available()
    args.amp = bool(args.amp) and on_cuda  # the trainer uses amp on CUDA only
    paper_batch = args.paper_batch if args.paper_batch is not None else (8 if on_cuda else 2)
    paper_model_repeats = (args.paper_model_repeats if args.paper_model_repeats is not None
                           else (args.paper_repeats if on_cuda else 1))

    say("mri_ssl pretraining pipeline benchmark")
    say(f"python {platform.python_version()}, torch {torch.__version__}, MONAI {monai.__version__}, "
        f"{platform.machine()} {platform.system()}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    say(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if on_cuda else "")
        + f"; torch threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op; "
        f"CPUs available: {cpus}")
    machine_load("start")
    available = memory_available_gb()
    if available is not None:
        say(f"memory available at start: {available:.1f} GB")
    say(f"simulator: {'fused' if args.fused else 'eager'}; amp: {args.amp}; modes: {' '.join(args.modes)}; "
        f"warm-up: {args.warmup}; seed: {args.seed}")
    say()

    configs = []
    for name in args.configs:
        if name == "demo":
            configs.append(ModelConfig(**DEMO, batch=args.demo_batch, data_repeats=args.demo_repeats,
                                       model_repeats=args.demo_repeats))
        else:
            config = ModelConfig(**PAPER, batch=paper_batch, data_repeats=args.paper_repeats,
                                 model_repeats=paper_model_repeats)
            if paper_batch != 8:
                config.notes.append(f"paper model timed at batch {paper_batch}, not the bundle's 8"
                                    + ("" if on_cuda else " (CPU default; --paper-batch to change)"))
            if paper_model_repeats < args.paper_repeats:
                config.notes.append(f"paper model: {paper_model_repeats} timed model step(s) after {args.warmup} "
                                    f"warm-up (CPU default; --paper-model-repeats to change)")
            configs.append(config)

    clock = Clock(device)
    results = []
    for config in configs:
        say(f"[{config.name}] features {config.features}, reconstruction {config.reconstruction_channels}, "
            f"projection {config.projection_hidden}->{config.projection_dim}, crop {config.crop}^3, "
            f"batch {config.batch}")
        results.append(run_config(config, args, device, clock))
        say()

    bundle = None
    if not args.skip_bundle_run:
        bundle = run_bundle(args)
        say()

    # ------------------------------------------------------------------------------------------------------------
    say("=" * 100)
    say("Seconds per training step (median over the timed repeats; model step timed once per configuration, "
        "same shapes in every mode)")
    rows = []
    for result in results:
        config, model = result["config"], result["model"]
        for mode, data in result["modes"].items():
            goal = ("PASS" if data["ratio"] <= DATA_TO_MODEL_GOAL else "MISS") if config.goal else "(no goal)"
            rows.append([
                config.name, str(config.batch), f"{config.crop}^3", mode,
                f"{fmt_s(data['median'])} (n={data['n']})", f"{fmt_s(model['median'])} (n={model['n']})",
                f"{data['ratio'] * 100:.1f}%", goal,
                f"{fmt_s(data['first'])} / {fmt_s(model['first'])}",
            ])
    table(rows, ["config", "batch", "crop", "mode", "data s", "model s", "data/model",
                 f"goal <= {DATA_TO_MODEL_GOAL:.0%}", "first call data / model s"])
    say("data = ContrastiveViewPair(maps) for both views of every item; model = ContrastiveTrainer._iteration with "
        "the views given (forward, NT-Xent, L1, backward, clip 12, AdamW).")
    say("first call = the untimed warm-up (cold caches); PASS/MISS is information only.")
    for result in results:
        if "model_contiguous" in result:
            channels_last, contiguous = result["model"]["median"], result["model_contiguous"]["median"]
            say(f"[{result['config'].name}] model step, channels-last (the bundle's) {fmt_s(channels_last)} s against "
                f"contiguous {fmt_s(contiguous)} s (medians of the same rounds, same weights and views): ratio "
                f"{channels_last / contiguous:.2f}")
    for result in results:
        config = result["config"]
        for note in config.notes:
            say(f"note: {note}")
        spread = result["model"]
        say(f"[{config.name}] {result['parameters'] / 1e6:.2f} M parameters; model step min/max "
            f"{fmt_s(spread['min'])}/{fmt_s(spread['max'])} s; data min/max "
            + ", ".join(f"{m} {fmt_s(d['min'])}/{fmt_s(d['max'])} s" for m, d in result["modes"].items())
            + (f"; peak memory ({result['peak_memory_what']}): {result['peak_memory_gb']:.2f} GB"
               if result.get("peak_memory_gb") is not None else ""))

    breakdown_rows = []
    for result in results:
        for mode, parts in result["breakdown"].items():
            total = parts["_total"]
            for attribute, label in list(BREAKDOWN_PARTS.items()) + [("_other", "rest (z-score, stacking, ...)")]:
                breakdown_rows.append([result["config"].name, mode, label, fmt_s(parts[attribute]),
                                       f"{parts[attribute] / total * 100:.0f}%"])
            breakdown_rows.append([result["config"].name, mode, "total", fmt_s(total), "100%"])
    if breakdown_rows:
        say()
        say(f"Data time by part (median over {args.breakdown_repeats} separate calls per mode; parts timed "
            "individually, summed over items and views)")
        table(breakdown_rows, ["config", "mode", "part", "seconds", "share"])

    if bundle is not None:
        say()
        say("CPU demo bundle run (train.json + cpu_demo.json, on the CPU, subprocess)")
        status = ("timed out" if bundle["timed_out"] else
                  "ok" if bundle["returncode"] == 0 else f"FAILED (exit {bundle['returncode']})")
        say(f"  status: {status}; wall {bundle['wall_seconds']:.1f} s"
            + (f", CPU {bundle['cpu_seconds']:.1f} s" if bundle.get("cpu_seconds") is not None else "")
            + (f"; training (ignite engine run) {bundle['engine_seconds']:.1f} s" if bundle["engine_seconds"] else "")
            + (", epochs " + " / ".join(f"{s:.1f}" for s in bundle["epoch_seconds"]) + " s"
               if bundle["epoch_seconds"] else ""))
        say("  demo data: " + ("written during this run (included in wall time)" if bundle["wrote_demo_data"]
                               and status == "ok" else "being written when the run stopped"
                               if bundle["wrote_demo_data"]
                               else "reused from " + str(bundle["work_dir"] / "demo_data")))
        if bundle.get("peak_rss_gb") is not None:
            verdict = ("PASS" if bundle["peak_rss_gb"] <= DEMO_PEAK_MEMORY_GOAL_GB else "MISS") if status == "ok" \
                else "no verdict, the run did not finish"
            say(f"  peak RSS: {bundle['peak_rss_gb']:.2f} GB (goal <= {DEMO_PEAK_MEMORY_GOAL_GB:g} GB): {verdict}")
        else:
            say("  peak RSS: not available on this platform (no os.wait4)")
        if bundle.get("tail"):
            say("  last lines of the log:")
            for line in bundle["tail"]:
                say("    " + line[:200])
        say("  output: " + ("removed" if bundle.get("removed") else f"kept in {bundle['work_dir']}"))

    say()
    machine_load("end")
    say(f"total benchmark time: {time.perf_counter() - wall_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
