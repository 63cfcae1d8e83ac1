"""The `mri-ssl` command line: `demo`, `demo-data`, `simulate`, `manifest`, `check-data`, `experiment`, and the
bundle-trust commands (`verify-bundle`, `fetch-weights`, `pack-bundle`, `unpack-bundle`, `run-bundle`, in
mri_ssl/trust/commands.py).

Every command validates its input before doing expensive work, prints a one-line error naming the file or parameter
on bad input and exits with status 2, and writes its outputs atomically (no partial files on failure).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from mri_ssl import __version__
from mri_ssl.data.integrity import write_check_report
from mri_ssl.errors import InputError, WriteError
from mri_ssl.experiments import expand_runs, load_grid, run_grid, write_tables
from mri_ssl.experiments.figures import plot_learning_curves
from mri_ssl.experiments.runner import failure_report
from mri_ssl.io.atomic import save_json
from mri_ssl.method_demos import DEFAULT_METHOD, METHOD_DEMOS, METHODS, run_method_demo
from mri_ssl.trust.commands import add_trust_commands

EXIT_BAD_INPUT = 2

logger = logging.getLogger("mri_ssl")


# ----------------------------------------------------------------------------------------------------------------
# demo


# Options of the 3-D demo's stage 1 (the simulation), which a 2-D method's demo does not have: flag -> default (the
# parser's defaults are these; a value other than the default means the user gave the option).
BRAIN_ONLY_OPTIONS = {"resolution_mm": 1.0, "random_protocols": 3, "seed": 0, "fused": False, "simulation_only": False}


def _command_demo(args: argparse.Namespace) -> int:
    from mri_ssl.demo import format_summary, run_demo  # lazy: ~1.4 s to import (simulator, NIfTI I/O)

    if args.method != DEFAULT_METHOD:
        given = [name for name, default in BRAIN_ONLY_OPTIONS.items() if getattr(args, name) != default]
        if given:
            flag = f"--{given[0].replace('_', '-')}"
            raise InputError(flag, f"is an option of the 3-D demo's simulation stage (`mri-ssl demo` / "
                                   f"`mri-ssl demo brain`), not of `mri-ssl demo {args.method}`")
        summary = run_method_demo(args.method, args.out, seeds=args.seeds, progress=not args.quiet,
                                  grid_path=args.grid, bundles_dir=args.bundles_dir,
                                  trust_bundles=args.trust_bundle, jobs=args.jobs)
        print(f"outputs in {Path(args.out).resolve()}")
        print(format_summary(summary))
        return 1 if summary["experiment"]["failed"] else 0
    summary = run_demo(args.out, resolution_mm=args.resolution_mm, random_protocols=args.random_protocols,
                       seed=args.seed, fused=args.fused, progress=not args.quiet, seeds=args.seeds,
                       grid_path=args.grid, bundles_dir=args.bundles_dir, simulation_only=args.simulation_only,
                       trust_bundles=args.trust_bundle, jobs=args.jobs)
    print(f"outputs in {Path(args.out).resolve()}")
    print(format_summary(summary))  # last: it ends with why the exit status is 1, when a run did not finish
    experiment = summary.get("experiment")
    return 1 if experiment and experiment["failed"] else 0


# ----------------------------------------------------------------------------------------------------------------
# demo-data


def _command_demo_data(args: argparse.Namespace) -> int:
    from mri_ssl.data.brain.demo import write_demo_data  # lazy: ~1.2 s to import (simulator, NIfTI I/O)

    path = write_demo_data(args.out, subjects=args.subjects, validation_subjects=args.validation_subjects,
                           resolution_mm=args.resolution_mm, seed=args.seed, deformation_mm=args.deformation_mm,
                           progress=not args.quiet)
    print(f"wrote {args.subjects} phantom subjects and the datalist {path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# simulate

# CLI flag -> (protocol key, factor from the flag's unit to the protocol's unit).
PROTOCOL_FLAGS = {
    "tr": ("tr", 1.0),
    "te": ("te", 1.0),
    "ti": ("ti", 1.0),
    "tx": ("tx", 1.0),
    "flip_angle_deg": ("flip_angle", math.pi / 180.0),
    "n": ("n", 1.0),
    "inversion_efficiency": ("inversion_efficiency", 1.0),
}


def _parse_map_files(values: Sequence[str]) -> dict[str, Path]:
    """``--maps DIR`` or ``--maps pd=a.nii.gz r1=b.nii.gz ...`` -> map name to path."""
    from mri_ssl.data.brain.maps import find_map_files  # lazy: ~1.3 s to import (simulator, NIfTI I/O)

    if len(values) == 1 and "=" not in values[0]:
        return find_map_files(values[0])
    files = {}
    for value in values:
        if "=" not in value:
            raise InputError("--maps", f"expected one folder or NAME=FILE pairs, got {value!r}")
        name, path = value.split("=", 1)
        files[name.strip().lower()] = Path(path)
    return files


def _protocol_from_args(args: argparse.Namespace) -> dict[str, float]:
    # lazy: the physics package takes ~1 s to import, paid only by `simulate`
    from mri_ssl.physics.protocols import PROTOCOL_PARAMETERS, TYPICAL_PROTOCOLS, check_sequence, sample_protocol

    sequence = check_sequence(args.sequence)
    given = {key: getattr(args, flag) for flag, (key, _) in PROTOCOL_FLAGS.items() if getattr(args, flag) is not None}
    if args.random:
        if given:
            raise InputError("--random", f"draws the whole protocol; do not also give {', '.join(sorted(given))}")
        generator = torch.Generator().manual_seed(args.seed)
        return {k: float(v[0]) for k, v in sample_protocol(sequence, 1, generator).items()}
    unused = [key for key in given if key not in PROTOCOL_PARAMETERS[sequence]]
    if unused:
        raise InputError(f"--{unused[0].replace('_', '-')}", f"is not a parameter of {sequence} "
                         f"(it takes {', '.join(PROTOCOL_PARAMETERS[sequence])})")
    protocol = dict(TYPICAL_PROTOCOLS[sequence])
    for flag, (key, factor) in PROTOCOL_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            protocol[key] = value * factor
    return protocol


def _command_simulate(args: argparse.Namespace) -> int:
    # lazy: the simulator and NIfTI I/O take ~1.3 s to import, paid only by `simulate`
    from mri_ssl.data.brain.maps import load_maps
    from mri_ssl.io.nifti import save_nifti
    from mri_ssl.physics.protocols import check_protocol, check_sequence
    from mri_ssl.physics.sequences import rician_noise
    from mri_ssl.physics.simulate import simulate

    out = Path(args.out)
    if not str(out).lower().endswith((".nii", ".nii.gz")):
        raise InputError("--out", f"must end in .nii or .nii.gz, got {out}")
    if args.noise_sigma is not None and not args.noise_sigma >= 0:
        raise InputError("--noise-sigma", f"must be >= 0, got {args.noise_sigma}")
    # Parameters are checked before the (possibly large) maps are read.
    sequence = check_sequence(args.sequence)
    protocol = _protocol_from_args(args)
    check_protocol(sequence, protocol)
    map_files = _parse_map_files(args.maps)
    maps, affine = load_maps(map_files)
    image = simulate(maps, sequence, protocol, fused=args.fused, validate=False)
    if args.noise_sigma:
        generator = torch.Generator().manual_seed(args.seed)
        image = rician_noise(image, args.noise_sigma, generator=generator)
    save_nifti(image, affine, out, description=f"mri_ssl {sequence}")
    sidecar_path = out.with_name(out.name.rsplit(".nii", 1)[0] + ".json")
    sidecar = {
        "sequence": sequence,
        "protocol": protocol,
        "units": "seconds, radians",
        "flip_angle_deg": math.degrees(protocol["flip_angle"]) if "flip_angle" in protocol else None,
        "random": bool(args.random),
        "seed": args.seed if (args.random or args.noise_sigma) else None,
        "noise_sigma": args.noise_sigma,
        "maps": {name: str(path) for name, path in map_files.items()},
        "software": f"mri_ssl {__version__}",
    }
    save_json(sidecar, sidecar_path)
    print(f"wrote {out} ({sequence}, {' '.join(f'{k}={v:.6g}' for k, v in protocol.items())}) and {sidecar_path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# manifest


def _command_manifest(args: argparse.Namespace) -> int:
    from mri_ssl.data.manifests import manifest_summary, write_manifest  # lazy: ~6 s to import (every scanner)

    options = {}
    if args.kind == "ixi" and args.label_dir:
        options["label_dir"] = args.label_dir
    if args.kind == "demo":
        options.update(subjects=args.subjects, test_subjects=args.test_subjects,
                       validation_subjects=args.validation_subjects, resolution_mm=args.resolution_mm,
                       progress=not args.quiet)
    if args.kind == "cmr":
        from mri_ssl.data.cardiac.cmr_dicom import write_cmr_dicom_manifest  # lazy: ~1.4 s to import

        folder = args.out or str(Path("data_manifests") / "cmr")
        path = write_cmr_dicom_manifest(args.directory, folder, seed=args.seed)
        manifest = json.loads(Path(path).read_text())
        print(f"{len(manifest['studies'])} studies: " + ", ".join(
            f"{split} {len(manifest[split])}" for split in ("training", "validation", "test")))
        for skipped in manifest.get("skipped", []):
            print(f"skipped {skipped['file']}: {skipped['problem']}")
        print(f"wrote {path} (use its folder as dataset_dir of bundles/cmr_video_text)")
        return 0
    out = args.out or str(Path("data_manifests") / f"{args.kind}.json")
    if args.kind == "dicom":
        options.update(images_dir=args.images_dir or str(Path(out).with_suffix("")) + "_images",
                       progress=not args.quiet)
    path = write_manifest(args.kind, args.directory, out, seed=args.seed, **options)
    manifest = json.loads(Path(path).read_text())
    print(manifest_summary(manifest))
    for skipped in manifest.get("skipped", []):
        print(f"skipped {skipped['file']}: {skipped['problem']}")
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# experiment


def _command_experiment(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid, bundles_dir=args.bundles_dir)
    if args.seeds:
        grid = dataclasses.replace(grid, seeds=tuple(dict.fromkeys(args.seeds)))
    out = Path(args.out or Path("experiments_out") / grid.name)
    if args.dry_run:
        for run in expand_runs(grid, infer=not args.no_inference):
            print(f"{run.label:<40} {run.spec.bundle_dir.name:<20} {run.config_hash[:10]}")
        return 0
    timeout_s = args.timeout_min * 60.0 if args.timeout_min else None
    results = run_grid(grid, out, infer=not args.no_inference, progress=not args.quiet, timeout_s=timeout_s,
                       trust_bundles=args.trust_bundle, jobs=args.jobs, wait_for_lock=args.wait)
    paths = write_tables(grid, results, out)
    print(paths["markdown"].read_text())
    curves = plot_learning_curves(results, grid, out / "figures" / "learning_curves.png")
    print(f"tables in {paths['markdown']} and {paths['csv']}; every run in {out / 'runs.csv'}"
          + (f"; probe and loss against steps in {curves}" if curves else ""))
    failures = failure_report(results, out / "runs.csv")
    for line in failures:
        print(line)
    return 1 if failures else 0

# check-data


def _command_check_data(args: argparse.Namespace) -> int:
    return write_check_report(args.manifest, args.report, splits=args.splits, keys=args.keys,
                              label_key=args.label_key or None, spatial_dims=args.spatial_dims or None,
                              max_bytes=int(args.max_gb * 1024 ** 3), progress=not args.quiet)


# ----------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mri-ssl",
        description="Self-supervised representation learning on MRI (MONAI bundles, qMRI physics simulator).",
    )
    parser.add_argument("--version", action="version", version=f"mri_ssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="run the main job: simulate, pretrain Base / SeqAug / SeqInv, segment, denoise, compare "
                     f"(or one 2-D method: {' | '.join(METHOD_DEMOS)})",
        description="`mri-ssl demo` (= `mri-ssl demo brain`), the 3-D sequence-invariant method: "
                    "Stage 1: build the MNI152 qMRI phantom, simulate FSE/GRE/FLAIR/MPRAGE with the typical and "
                    "random protocols, write NIfTI files and montage.png, and report how well the simulated MPRAGE "
                    "matches the real MNI152 T1. Stage 2: run the grid experiments/demo.yaml through the bundles "
                    "(slim encoders pretrained in the Base, SeqAug and SeqInv modes; frozen-encoder tissue "
                    "segmentation and denoising trained on simulated T1w, with a random-init baseline; evaluated on "
                    "unseen contrasts and the real MNI152 T1). Stage 3: results.md / results.csv, figures/*.png and "
                    "a printed table. About 13-17 minutes and 3.8 GB on 2 CPU cores with one seed; finished runs are "
                    "reused. "
                    "`mri-ssl demo cardiac`: SimSiam pretraining of a ViT on the embedded cardiac phantom "
                    "(experiments/demo_cardiac.yaml through bundles/cardiac_sequence_classification), fine-tuning and "
                    "linear probe against a random-init ViT at 10 % and 100 % of the labels, the representation "
                    "probe at step 0 and the end, learning curves and test-split confusion matrices. "
                    "`mri-ssl demo fundus`: CAMContrast on the embedded fundus photographs with placed lesions "
                    "(experiments/demo_fundus.yaml through bundles/fundus_camcontrast): the stage-1 CAM classifier "
                    "and its pointing game, heatmap-guided contrastive pretraining, then classification and lesion "
                    "segmentation from the CAMContrast encoder against random init, and CAM overlays with the placed "
                    "lesions. "
                    "`mri-ssl demo cmr`: the CMR video-text CLIP model on the embedded phantom studies "
                    "(experiments/demo_cmr.yaml through bundles/cmr_video_text): retrieval (R@K, RSUM) and a linear "
                    "probe of the trained model against the same network untrained, the training history and "
                    "retrieval examples (a report and its top-5 studies). "
                    "The --resolution-mm, --random-protocols, --seed, --fused and --simulation-only options are the "
                    "3-D demo's only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("method", nargs="?", default=DEFAULT_METHOD, choices=METHODS,
                      help=f"which method: {DEFAULT_METHOD} (the 3-D sequence-invariant demo, the default), "
                           "cardiac (SimSiam ViT, cardiac MR sequence classification), fundus (CAMContrast, "
                           "fundus photographs), cmr (video-text CLIP, "
                           "report-to-study retrieval)")
    demo.add_argument("--out", default="demo_out", help="output folder")
    demo.add_argument("--resolution-mm", type=float, default=BRAIN_ONLY_OPTIONS["resolution_mm"],
                      help="stage 1 phantom voxel size in mm")
    demo.add_argument("--random-protocols", type=int, default=BRAIN_ONLY_OPTIONS["random_protocols"],
                      help="stage 1 random protocols per sequence")
    demo.add_argument("--seed", type=int, default=BRAIN_ONLY_OPTIONS["seed"], help="seed of stage 1's random protocols")
    demo.add_argument("--fused", action="store_true", help="use the compiled simulator kernels")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--seeds", type=int, nargs="+", default=[0],
                      help="training seeds of stage 2 (three seeds take three times as long)")
    demo.add_argument("--simulation-only", action="store_true", help="stop after stage 1 (about a minute)")
    demo.add_argument("--grid", default=None, help="a grid YAML instead of experiments/demo.yaml (demo_<method>.yaml)")
    demo.add_argument("--bundles-dir", default=None, help="the folder holding the bundles, instead of the grid's")
    demo.add_argument("--trust-bundle", action="store_true",
                      help="run the bundles even if the static scan refused something in them or the grid")
    demo.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                      help="bundle runs at once, each with its share of the CPU threads (small CPU runs use two "
                           "single-threaded processes better than one two-threaded one)")
    demo.set_defaults(handler=_command_demo)

    demo_data = commands.add_parser("demo-data", help="write the MNI152 qMRI phantom as NIfTI files + datalist",
                                    description="Write phantom subjects (qMRI maps, tissue labels, the real MNI152 "
                                                "T1) and a decathlon-style datalist.json that bundles read.")
    demo_data.add_argument("--out", default="demo_data", help="output folder (default: demo_data)")
    demo_data.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    demo_data.add_argument("--validation-subjects", type=int, default=1, help="of which validation (default 1)")
    demo_data.add_argument("--resolution-mm", type=float, default=1.0, help="voxel size in mm (default 1.0)")
    demo_data.add_argument("--seed", type=int, default=0, help="seed of the per-subject variation (default 0)")
    demo_data.add_argument("--deformation-mm", type=float, default=3.0,
                           help="std of each subject's smooth random displacement in mm; 0 keeps MNI space "
                                "(default 3)")
    demo_data.add_argument("--quiet", action="store_true", help="no progress bars")
    demo_data.set_defaults(handler=_command_demo_data)

    simulate = commands.add_parser(
        "simulate", help="simulate an MR image from qMRI maps (NIfTI in, NIfTI out)",
        description="Simulate FSE, GRE, FLAIR or MPRAGE from PD / R1 / R2* (/ R2 / MT) maps, keeping the affine. "
                    "Unspecified protocol parameters take typical 3 T values; --random draws a whole protocol from "
                    "the paper's distributions. R1, R2, R2* in 1/s; MT as a fraction in [0, 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    simulate.add_argument("--maps", nargs="+", required=True, metavar="DIR_OR_FILES",
                          help="a folder of maps named pd/r1/r2s/r2/mt(.nii.gz) or ending in _PD/_R1/_R2s/_MT, "
                               "or NAME=FILE pairs, e.g. pd=a.nii.gz r1=b.nii.gz r2s=c.nii.gz")
    simulate.add_argument("--sequence", required=True, help="fse, gre, flair or mprage")
    simulate.add_argument("--out", required=True, help="output .nii.gz (a .json sidecar with the protocol is "
                                                       "written beside it)")
    protocol = simulate.add_argument_group("protocol (seconds and degrees; omitted values take typical values)")
    protocol.add_argument("--tr", type=float, help="repetition time, s (MPRAGE: time between inversions)")
    protocol.add_argument("--te", type=float, help="echo time, s")
    protocol.add_argument("--ti", type=float, help="inversion time, s (FLAIR, MPRAGE)")
    protocol.add_argument("--tx", type=float, help="MPRAGE excitation spacing, s")
    protocol.add_argument("--flip-angle-deg", type=float, help="flip angle, degrees (GRE, MPRAGE)")
    protocol.add_argument("--n", type=float, help="MPRAGE excitations per inversion")
    protocol.add_argument("--inversion-efficiency", type=float, help="MPRAGE inversion efficiency in (0, 1]")
    simulate.add_argument("--random", action="store_true", help="draw a random protocol (use --seed)")
    simulate.add_argument("--seed", type=int, default=0, help="seed for --random and --noise-sigma")
    simulate.add_argument("--noise-sigma", type=float, default=None,
                          help="add Rician noise of this standard deviation (signal units)")
    simulate.add_argument("--fused", action="store_true", help="use the compiled kernel (worth it for big volumes)")
    simulate.set_defaults(handler=_command_simulate)

    manifest = commands.add_parser(
        "manifest", help="scan a local dataset copy and write a decathlon-style datalist (manifest)",
        description="Scan DIR and write a datalist JSON with training / validation / test entries (image, label, "
                    "subject, site, sequence) and deterministic subject-level splits. Kinds: ixi (IXI T1/T2/PD with "
                    "tissue labels of your own; GST split 226/31/65 like the paper, HH and IOP as out-of-domain "
                    "test sites), arc (BIDS T1w/T2w/FLAIR with lesion masks), qmri (one folder of PD/R1/R2*/MT maps "
                    "per subject, for pretraining), demo (writes the embedded MNI152 phantom images into DIR), "
                    "dicom (cardiac MR DICOM series: central 20 %% of slices at 84x84 as NIfTI, sequence class "
                    "T1/T2/Cine/LGE/Other from the headers, patient-level 70/10/20 splits; unreadable files are "
                    "listed and skipped), cmr (one folder per CMR study with DICOM Cine/LGE series and one report "
                    ".txt; writes 84x84 NIfTI frame stacks and OUT/manifest.json, OUT being a folder, for the "
                    "cmr_video_text bundle). "
                    "See data_manifests/README.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    manifest.add_argument("kind", choices=["ixi", "arc", "qmri", "demo", "dicom", "cmr", "odir", "idrid", "refuge",
                                           "chestxray14"],
                          help="dataset layout (odir, idrid, refuge, chestxray14: 2-D images for fundus_camcontrast)")
    manifest.add_argument("directory", metavar="DIR", help="the dataset folder (for demo: where to write it)")
    manifest.add_argument("--out", default=None, help="manifest path (default: data_manifests/KIND.json)")
    manifest.add_argument("--seed", type=int, default=0, help="seed of the subject-level splits")
    manifest.add_argument("--label-dir", default=None, help="ixi: a folder of tissue label files")
    manifest.add_argument("--subjects", type=int, default=8, help="demo: number of phantom subjects")
    manifest.add_argument("--test-subjects", type=int, default=2, help="demo: of which test subjects")
    manifest.add_argument("--validation-subjects", type=int, default=1, help="demo: of which validation subjects")
    manifest.add_argument("--resolution-mm", type=float, default=2.0, help="demo: voxel size in mm")
    manifest.add_argument("--images-dir", default=None,
                          help="dicom: where the 84x84 NIfTI slices go (default: beside --out, NAME_images/)")
    manifest.add_argument("--quiet", action="store_true", help="no progress bars")
    manifest.set_defaults(handler=_command_manifest)

    experiment = commands.add_parser(
        "experiment", help="run a grid of bundle runs (modes x label fractions x seeds x datasets) into tables",
        description="Run every bundle run of a grid YAML (see experiments/demo.yaml and experiments/paper_tables.yaml):"
                    " pretraining per mode and seed, then each downstream task per mode, label fraction and seed, "
                    "each as `python -m monai.bundle run` in its own folder. Finished runs are reused on a re-run "
                    "(same config hash); a failed run is reported and the grid goes on. Writes results.md (the "
                    "paper's table layout, mean +/- std over seeds), results.csv and runs.csv. Exit status 1 when "
                    "any run failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    experiment.add_argument("grid", metavar="GRID.yaml", help="the grid file")
    experiment.add_argument("--out", default=None, help="output folder (default: experiments_out/<grid name>)")
    experiment.add_argument("--seeds", type=int, nargs="+", default=None, help="run these seeds instead of the grid's")
    experiment.add_argument("--bundles-dir", default=None,
                            help="the folder holding the bundles, instead of the grid's 'bundles' entry")
    experiment.add_argument("--no-inference", action="store_true", help="skip the downstream inference stages")
    experiment.add_argument("--timeout-min", type=float, default=None, help="stop a bundle stage after this long")
    experiment.add_argument("--dry-run", action="store_true", help="list the runs and their config hashes, run none")
    experiment.add_argument("--quiet", action="store_true", help="no progress bar")
    experiment.add_argument("--jobs", type=int, default=1,
                            help="bundle runs at once, each with its share of the CPU threads (1 on a GPU)")
    experiment.add_argument("--trust-bundle", action="store_true",
                            help="run the bundles even if the static scan refused something in them or the grid")
    experiment.add_argument("--wait", action="store_true",
                            help="if another runner is writing --out, wait for it instead of stopping")
    experiment.set_defaults(handler=_command_experiment)

    check_data = commands.add_parser(
        "check-data", help="read and check every file of a manifest; per-case table, JSON report, exit 1 on errors",
        description="Read every file of every case of MANIFEST completely and check it before any training: gzip "
                    "CRC, declared size vs a memory cap and the file length, dimensions, zero-size axes, NaN/Inf "
                    "voxels, finite non-degenerate affine and voxel size, shape and affine agreement across the "
                    "files of a case, label values within the manifest's classes, qMRI maps in physical ranges, no "
                    "subject in two splits. Prints one row per case (ok / warning / error, the check and the value), "
                    "writes the JSON report and exits with status 1 when any error is found (2: bad arguments).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check_data.add_argument("manifest", metavar="MANIFEST", help="datalist / manifest JSON (mri-ssl manifest)")
    check_data.add_argument("--report", default="data_check.json", help="where to write the JSON report")
    check_data.add_argument("--splits", nargs="+", default=["training", "validation", "test"], help="splits to read")
    check_data.add_argument("--keys", nargs="+", default=None,
                            help="entry keys naming files (default: every value ending in an image suffix)")
    check_data.add_argument("--label-key", default="label", help="key of the label map ('' for none)")
    check_data.add_argument("--spatial-dims", type=int, default=3, help="spatial dimensions expected (0: any)")
    check_data.add_argument("--max-gb", type=float, default=8.0, help="memory cap per file in GiB")
    check_data.add_argument("--quiet", action="store_true", help="no progress bar")
    check_data.set_defaults(handler=_command_check_data)

    add_trust_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (InputError, WriteError) as error:  # bad input, or a file the disk refused: one line naming it
        print(f"mri-ssl {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
