"""The `mri-ssl` command line: `demo`, `demo-data`, `simulate`, `manifest`.

Every command validates its input before doing expensive work, prints a one-line error naming the file or parameter
on bad input and exits with status 2, and writes its outputs atomically (no partial files on failure).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

from mri_ssl import __version__
from mri_ssl.errors import InputError

EXIT_BAD_INPUT = 2

logger = logging.getLogger("mri_ssl")


# ----------------------------------------------------------------------------------------------------------------
# demo


def _command_demo(args: argparse.Namespace) -> int:
    from mri_ssl.demo import format_summary, run_demo

    summary = run_demo(args.out, resolution_mm=args.resolution_mm, random_protocols=args.random_protocols,
                       seed=args.seed, fused=args.fused, progress=not args.quiet)
    print(format_summary(summary))
    print(f"outputs in {Path(args.out).resolve()}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# demo-data


def _command_demo_data(args: argparse.Namespace) -> int:
    from mri_ssl.data.demo_data import write_demo_data

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
    from mri_ssl.data.nifti import find_map_files

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
    from mri_ssl.data.nifti import load_maps, save_json, save_nifti
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
    from mri_ssl.data.manifests import manifest_summary, write_manifest

    options = {}
    if args.kind == "ixi" and args.label_dir:
        options["label_dir"] = args.label_dir
    if args.kind == "demo":
        options.update(subjects=args.subjects, test_subjects=args.test_subjects,
                       validation_subjects=args.validation_subjects, resolution_mm=args.resolution_mm,
                       progress=not args.quiet)
    if args.kind == "cmr":
        from mri_ssl.data.cmr_dicom import write_cmr_dicom_manifest

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mri-ssl",
        description="Self-supervised representation learning on MRI (MONAI bundles, qMRI physics simulator).",
    )
    parser.add_argument("--version", action="version", version=f"mri_ssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser("demo", help="run the demo: phantom -> every sequence -> NIfTI files and a montage",
                               description="Build the MNI152 qMRI phantom, simulate FSE/GRE/FLAIR/MPRAGE with the "
                                           "typical and random protocols, write NIfTI files, montage.png and "
                                           "summary.json, and report how well the simulated MPRAGE matches the "
                                           "real MNI152 T1.")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--resolution-mm", type=float, default=1.0, help="phantom voxel size in mm (default 1.0)")
    demo.add_argument("--random-protocols", type=int, default=3, help="random protocols per sequence (default 3)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random protocols (default 0)")
    demo.add_argument("--fused", action="store_true", help="use the compiled simulator kernels")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
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
    manifest.add_argument("kind", choices=["ixi", "arc", "qmri", "demo", "dicom", "cmr"], help="dataset layout")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args) or 0)
    except InputError as error:
        print(f"mri-ssl {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
