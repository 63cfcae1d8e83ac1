"""The bundle-trust subcommands of `mri-ssl`: verify-bundle, fetch-weights, pack-bundle, unpack-bundle, run-bundle.

Kept apart from cli.py, which only calls :func:`add_trust_commands`. No command parses or runs a bundle whose
static scan failed unless the user passes ``--trust-bundle``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_write_text
from mri_ssl.trust.packing import pack_bundle, unpack_bundle
from mri_ssl.trust.scan import scan_bundle, scan_overrides
from mri_ssl.trust.shipped_weights import RECIPES, train_shipped_weights
from mri_ssl.trust.verify import ALL_CHECKS, verify_bundle
from mri_ssl.trust.weights import fetch_weights

STATIC_CHECKS = ("layout", "metadata", "static-scan", "large-files")


def _verify(directory: str, args: argparse.Namespace, static_only: bool):
    checks = STATIC_CHECKS if static_only else ALL_CHECKS
    print(f"== {directory}")
    return verify_bundle(directory, trust_bundle=args.trust_bundle, checks=checks,
                         echo=lambda line: print(f"  {line}", flush=True))


def _command_verify_bundle(args: argparse.Namespace) -> int:
    reports = [_verify(directory, args, args.static_only) for directory in args.directories]
    if args.report:
        atomic_write_text(args.report, json.dumps({str(r.bundle.name): [vars(c) for c in r.checks] for r in reports},
                                                  indent=2) + "\n")
    failed = [r.bundle.name for r in reports if not r.ok]
    print(f"verify-bundle: {len(reports) - len(failed)} of {len(reports)} bundles passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _command_fetch_weights(args: argparse.Namespace) -> int:
    files = fetch_weights(args.directory, timeout_s=args.timeout_s, progress=not args.quiet)
    print(f"fetch-weights: {len(files)} files in place, every one sha256-checked")
    return 0


def _command_pack_bundle(args: argparse.Namespace) -> int:
    report = _verify(args.directory, args, args.static_only)
    if not report.ok:
        print("pack-bundle: not packed, verify-bundle failed")
        return 1
    out = pack_bundle(args.directory, args.out)
    print(f"pack-bundle: wrote {out} (sha256 manifest of every file inside)")
    return 0


def _command_unpack_bundle(args: argparse.Namespace) -> int:
    target = unpack_bundle(args.archive, args.out)
    print(f"unpack-bundle: every file matched the manifest; unpacked to {target}")
    report = _verify(str(target), argparse.Namespace(trust_bundle=False), static_only=True)
    if not report.ok:
        print(f"unpack-bundle: {target} FAILED the static checks above; do not run it unless you trust its author")
        return 1
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(pair, "overrides are KEY=VALUE (VALUE as JSON, or a plain string)")
        key, value = pair.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def _command_run_bundle(args: argparse.Namespace) -> int:
    root = Path(args.directory).resolve()
    if not root.is_dir():
        raise InputError(args.directory, "bundle folder not found")
    configs = [str(root / "configs" / c) if not os.path.isabs(c) and not Path(c).exists() else c
               for c in args.config]
    overrides = _parse_overrides(args.overrides)
    # Command-line overrides are config text too: scanned like a config file of the bundle.
    findings = scan_bundle(root) + scan_overrides(overrides, "command_line")
    if findings and not args.trust_bundle:
        for finding in findings:
            print(f"  refused: {finding}")
        print(f"run-bundle: not run, {len(findings)} findings in the static scan (pass --trust-bundle to run it "
              f"anyway)")
        return 1
    from monai.bundle import run

    run(config_file=configs, bundle_root=str(root), **overrides)
    return 0


def _command_train_shipped_weights(args: argparse.Namespace) -> int:
    for name in (sorted(RECIPES) if args.bundles == ["all"] else args.bundles):
        train_shipped_weights(name, workdir=args.workdir, url_base=args.url_base)
    return 0


def add_trust_commands(commands) -> None:
    """Add the bundle-trust subcommands to the `mri-ssl` subparsers."""
    verify = commands.add_parser(
        "verify-bundle", help="check bundles: layout, metadata schema, static scan, weights, TorchScript, runs",
        description="Check each bundle and print one line per check (PASS / FAIL / SKIP): layout, metadata against "
                    "the MONAI bundle specification, a static scan of every config (_target_ allow-list, $ "
                    "expressions parsed and limited to allowed names), large_files.yml sha256 entries, "
                    "verify_net_in_out, TorchScript export compared with eager, and ConfigWorkflow "
                    "check_properties + run of the tiny train / evaluate / inference configs. Exit status 1 if any "
                    "check fails. Nothing is parsed or run when the static scan fails, unless --trust-bundle.")
    verify.add_argument("directories", nargs="+", metavar="DIR", help="bundle folders")
    verify.add_argument("--static-only", action="store_true",
                        help="only the checks that read files (layout, metadata, static scan, large files)")
    verify.add_argument("--trust-bundle", action="store_true",
                        help="parse and run the bundle even if the static scan refused something")
    verify.add_argument("--report", default=None, help="also write the results as JSON to this file")
    verify.set_defaults(handler=_command_verify_bundle)

    fetch = commands.add_parser(
        "fetch-weights", help="download a bundle's large_files.yml entries, each checked against its sha256",
        description="Download every file listed in DIR/large_files.yml that is missing or fails its hash: to a "
                    "temporary file, sha256-checked, then moved into place (a mismatch leaves no file). Archives "
                    "are extracted after rejecting absolute paths, '..' and links.")
    fetch.add_argument("directory", metavar="DIR", help="bundle folder")
    fetch.add_argument("--timeout-s", type=float, default=60.0, help="network timeout in seconds (default 60)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(handler=_command_fetch_weights)

    pack = commands.add_parser(
        "pack-bundle", help="verify a bundle, then zip it with a sha256 manifest of every file",
        description="Run verify-bundle on DIR; if it passes, write NAME_vVERSION.zip holding NAME/ and "
                    "NAME/manifest.json (sha256 of every file). models/, logs/, demo_data/ and other run outputs "
                    "are left out: weights are shared through large_files.yml.")
    pack.add_argument("directory", metavar="DIR", help="bundle folder")
    pack.add_argument("--out", default=None, help="archive name (default NAME_vVERSION.zip)")
    pack.add_argument("--static-only", action="store_true", help="verify with the file checks only (no runs)")
    pack.add_argument("--trust-bundle", action="store_true", help=argparse.SUPPRESS)
    pack.set_defaults(handler=_command_pack_bundle)

    unpack = commands.add_parser(
        "unpack-bundle", help="check a packed bundle against its manifest, then unpack and statically verify it",
        description="Refuse unsafe members, files missing from or not listed in the manifest, and sha256 "
                    "mismatches before writing anything; then unpack to OUT/NAME and run the static checks.")
    unpack.add_argument("archive", help="a zip written by mri-ssl pack-bundle")
    unpack.add_argument("--out", default=".", help="folder to unpack into (default: the current folder)")
    unpack.set_defaults(handler=_command_unpack_bundle)

    run = commands.add_parser(
        "run-bundle", help="run a bundle config (monai.bundle run) after the static scan",
        description="Scan every config of DIR, then run `monai.bundle run` with the given configs and --set "
                    "KEY=VALUE overrides. A bundle that fails the scan is not run unless --trust-bundle.")
    run.add_argument("directory", metavar="DIR", help="bundle folder")
    run.add_argument("--config", action="append", required=True,
                     help="config file (a name in DIR/configs or a path); repeat to merge several")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="a config override, VALUE parsed as JSON (scanned like the configs); repeat for several")
    run.add_argument("--trust-bundle", action="store_true", help="run even if the static scan refused something")
    run.set_defaults(handler=_command_run_bundle)

    weights = commands.add_parser(
        "train-shipped-weights", help="train the small demo weights a bundle ships as models/model.pt",
        description="Run a bundle's CPU recipe (its training config + configs/cpu_demo.json on the embedded demo data, "
                    "after the pretraining it depends on) in a temporary folder, write the inference network's "
                    "plain state dict to bundles/NAME/models/model.pt and its sha256 to large_files.yml.")
    weights.add_argument("bundles", nargs="+", metavar="NAME", help="bundle names, or 'all'")
    weights.add_argument("--workdir", default=None, help="parent of the temporary run folders (default: system temp)")
    weights.add_argument("--url-base", default=None,
                         help="where the repository's files are published; large_files.yml url = URL_BASE/bundles/"
                              "NAME/models/model.pt")
    weights.set_defaults(handler=_command_train_shipped_weights)
