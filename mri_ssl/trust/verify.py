"""`mri-ssl verify-bundle`: is a bundle complete, safe to parse, and does it run as the model zoo expects?

Two groups of checks, one line each (PASS / FAIL / SKIP). ``zoo-*``: the MONAI model zoo's own CI checks done the
zoo's way on a fresh copy of the bundle (:mod:`mri_ssl.trust.zoo`: files incl. ``models/model.pt``, version,
metadata, inference properties, net in/out and TorchScript scripting on ``configs/inference.json`` alone at n = 1);
a bundle the zoo would refuse fails here. The others are our stricter extra checks, in order:

1. ``layout``: LICENSE, configs/metadata.json, configs/inference.json (or .yaml), configs/cpu_demo.json,
   docs/README.md and large_files.yml exist.
2. ``metadata``: configs/metadata.json validates against :data:`METADATA_SCHEMA` (the MONAI Bundle Specification's
   required fields) and its ``version`` is a key of ``changelog``.
3. ``static-scan``: every config and logging config passes :func:`mri_ssl.trust.scan.scan_bundle`. Checks 5-7
   parse and run the bundle, so they are skipped when the scan fails, unless ``trust_bundle=True``.
4. ``large-files``: every entry of large_files.yml has a path inside the bundle, a URL and a sha256; a file already
   present must match its hash.
5. ``net-in-out``: MONAI's ``verify_net_in_out`` on ``network_def`` of the inference configs with the metadata's
   input / output channels, dtypes and spatial shape.
6. ``torchscript``: MONAI's ``ckpt_export`` of that network, reloaded with ``torch.jit.load`` and compared with the
   eager network on a random input (or skipped with the reason the bundle gives, as the model zoo allows).
7. ``workflow-train`` / ``workflow-evaluate`` / ``workflow-inference``: MONAI's ``ConfigWorkflow`` with the bundle's
   tiny config, ``check_properties()`` (the model zoo's unit-test check) then ``run()``, in a temporary bundle_root.

The tiny config of a bundle (the convention every bundle follows) is its config stack for the stage, then
``configs/cpu_demo.json``, then the ``overrides`` of the optional ``configs/verify_bundle.json``::

    {
      "stages": {"inference": ["configs/train.json", "configs/inference.json"]},  # default stacks below
      "overrides": {"num_epochs": 1, "epoch_length": 1, ...},                      # tiny values for the runs
      "net_in_out": {"n": 2, "p": 1, "any": 1} | {"skip": "why"},                 # sizes for "16*n" shapes
      "torchscript": {"use_trace": false} | {"skip": "why TorchScript cannot work for this network"},
      "skip_workflows": {"inference": "why this stage cannot run as a MONAI evaluator workflow"}
    }

``skip_workflows`` is an opt-out like the TorchScript one: the stage is reported as SKIP with the bundle's reason in
every run of verify-bundle, so the gap stays visible (its stack is still used for ``network_def``).

Default stacks: train = [train.json], evaluate = [train.json, evaluate.json] (skipped when there is no
evaluate.json), inference = [inference.json].
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from mri_ssl.errors import InputError
from mri_ssl.io.hashing import sha256_file
from mri_ssl.trust.files import is_sha256
from mri_ssl.trust.metadata_schema import METADATA_SCHEMA
from mri_ssl.trust.scan import scan_bundle
from mri_ssl.trust.zoo import ZOO_CHECKS, inference_config, run_zoo_checks

VERIFY_FILE = "configs/verify_bundle.json"
CPU_DEMO = "configs/cpu_demo.json"
REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "docs/README.md", "large_files.yml", CPU_DEMO)
STAGES = ("train", "evaluate", "inference")
STAGE_WORKFLOW_TYPE = {"train": "train", "evaluate": "eval", "inference": "infer"}
ALL_CHECKS = ("layout", "metadata", "static-scan", "large-files", "zoo", "net-in-out", "torchscript", "workflows")
RUNNING_CHECKS = frozenset({"zoo", "net-in-out", "torchscript", "workflows"})


@dataclass
class CheckResult:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class BundleReport:
    bundle: Path
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)

    def add(self, name: str, status: str, detail: str = "") -> CheckResult:
        result = CheckResult(name, status, detail)
        self.checks.append(result)
        return result


def load_verify_settings(root: Path) -> dict[str, Any]:
    path = root / VERIFY_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except ValueError as error:
        raise InputError(path, f"not valid JSON ({error})") from error
    if not isinstance(settings, dict):
        raise InputError(path, "expected a JSON object")
    allowed = ("stages", "overrides", "net_in_out", "torchscript", "skip_workflows")
    unknown = set(settings) - set(allowed)
    if unknown:
        raise InputError(path, f"unknown keys {sorted(unknown)} (allowed: {', '.join(allowed)})")
    skips = settings.get("skip_workflows") or {}
    if not isinstance(skips, dict) or not all(s in STAGES and isinstance(r, str) and r.strip()
                                              for s, r in skips.items()):
        raise InputError(path, f"skip_workflows maps stages ({', '.join(STAGES)}) to a reason, got {skips!r}")
    return settings


def stage_configs(root: Path, settings: dict[str, Any]) -> dict[str, list[Path] | None]:
    """Config stack per stage (without cpu_demo.json); None where the bundle has no such stage."""
    configs = root / "configs"
    inference = inference_config(root)
    defaults: dict[str, list[Path] | None] = {
        "train": [configs / "train.json"] if (configs / "train.json").is_file() else None,
        "evaluate": ([configs / "train.json", configs / "evaluate.json"]
                     if (configs / "evaluate.json").is_file() else None),
        "inference": [inference] if inference else None,
    }
    for stage, files in (settings.get("stages") or {}).items():
        if stage not in STAGES:
            raise InputError(root / VERIFY_FILE, f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        defaults[stage] = [root / f for f in files] if files else None
    return defaults


# ---------------------------------------------------------------------------------------------------------------
# checks that read files only


def check_layout(root: Path) -> list[str]:
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if inference_config(root) is None:
        missing.append("configs/inference.json")
    return [f"missing {name}" for name in missing]


def check_metadata(root: Path) -> list[str]:
    path = root / "configs" / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return [f"configs/metadata.json cannot be read ({error})"]
    validator = jsonschema.Draft7Validator(METADATA_SCHEMA)
    problems = [f"{'/'.join(str(p) for p in error.absolute_path) or '<top>'}: {error.message}"
                for error in sorted(validator.iter_errors(metadata), key=lambda e: list(e.absolute_path))]
    if isinstance(metadata, dict) and isinstance(metadata.get("changelog"), dict):
        if metadata.get("version") not in metadata["changelog"]:
            problems.append(f"version {metadata.get('version')!r} is not a key of changelog")
    return problems


def read_large_files(root: Path) -> list[dict[str, Any]]:
    """Entries of large_files.yml (MONAI's format: path, url, hash_val, hash_type), checked; InputError if bad."""
    path = root / "large_files.yml"
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InputError(path, f"cannot be read ({error})") from error
    entries = content.get("large_files") if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise InputError(path, "expected a mapping with a 'large_files' list")
    problems = []
    for i, entry in enumerate(entries):
        where = f"large_files[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        target = entry.get("path")
        if not isinstance(target, str) or not target or os.path.isabs(target) or ".." in Path(target).parts:
            problems.append(f"{where}: path must be relative and inside the bundle, got {target!r}")
        if not isinstance(entry.get("url"), str) or not entry["url"]:
            problems.append(f"{where}: no url")
        if str(entry.get("hash_type", "")).lower() != "sha256" or not is_sha256(entry.get("hash_val")):
            problems.append(f"{where}: needs hash_type sha256 and a 64-hex-digit hash_val")
    if problems:
        raise InputError(path, "; ".join(problems))
    return entries


def check_large_files(root: Path) -> tuple[list[str], str]:
    try:
        entries = read_large_files(root)
    except InputError as error:
        return [str(error)], ""
    problems, present = [], 0
    for entry in entries:
        local = root / entry["path"]
        if local.is_file():
            present += 1
            if sha256_file(local) != entry["hash_val"].lower():
                problems.append(f"{entry['path']}: sha256 does not match large_files.yml")
    return problems, f"{len(entries)} entries with sha256, {present} present locally"


# ---------------------------------------------------------------------------------------------------------------
# checks that parse and run the bundle (only after the static scan passed, or with trust)


def _network_configs(root: Path, settings: dict[str, Any]) -> list[str]:
    stack = stage_configs(root, settings)["inference"]
    if not stack:
        raise InputError(root, "no inference config to take network_def from")
    return [str(p) for p in stack]


def check_net_in_out(root: Path, settings: dict[str, Any]) -> str:
    from monai.bundle import verify_net_in_out

    sizes = {k: int(v) for k, v in (settings.get("net_in_out") or {}).items() if k in ("n", "p", "any")}
    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=_network_configs(root, settings), device="cpu", bundle_root=str(root), **sizes)
    return "output channels and dtype match network_data_format" + (f" ({sizes})" if sizes else "")


def check_torchscript(root: Path, settings: dict[str, Any]) -> tuple[str, str]:
    """(status, detail): ckpt_export, reload, compare with eager on one random input of the metadata's shape."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export
    from monai.bundle.scripts import _get_fake_spatial_shape

    options = settings.get("torchscript") or {}
    if options.get("skip"):
        return "SKIP", f"opted out in {VERIFY_FILE}: {options['skip']}"
    configs = _network_configs(root, settings)
    meta_file = str(root / "configs" / "metadata.json")
    parser = ConfigParser()
    parser.read_config(configs)
    parser.read_meta(meta_file)
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def").eval()
    image = parser["_meta_"]["network_data_format"]["inputs"]["image"]
    sizes = {k: int(v) for k, v in (settings.get("net_in_out") or {}).items() if k in ("n", "p", "any")}
    shape = (1, int(image["num_channels"]), *_get_fake_spatial_shape(image["spatial_shape"], **sizes))
    with tempfile.TemporaryDirectory(prefix="verify_ts_") as folder:
        checkpoint, exported = Path(folder) / "model.pt", Path(folder) / "model.ts"
        torch.save({"model": network.state_dict()}, checkpoint)
        use_trace = bool(options.get("use_trace", False))
        ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(checkpoint), meta_file=meta_file,
                    config_file=configs, key_in_ckpt="model", use_trace=use_trace,
                    input_shape=list(shape) if use_trace else None, bundle_root=str(root))
        scripted = torch.jit.load(str(exported), map_location="cpu").eval()
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            eager, reloaded = network(x), scripted(x)
    if not torch.allclose(eager, reloaded, rtol=1e-4, atol=1e-5):
        return "FAIL", f"TorchScript output differs from eager by {(eager - reloaded).abs().max().item():.3g}"
    how = "traced" if use_trace else "scripted"
    difference = (eager - reloaded).abs().max().item()
    return "PASS", f"{how}, reloaded, max |eager - TorchScript| = {difference:.2g} on {shape}"


def run_workflow(root: Path, stage: str, configs: list[Path], workdir: Path, overrides: dict[str, Any]) -> str:
    """ConfigWorkflow(check_properties) + run of one stage in ``workdir`` (the bundle_root of the run)."""
    from monai.bundle import ConfigWorkflow

    files = [str(p) for p in configs] + [str(root / CPU_DEMO)]
    logging_file = root / "configs" / "logging.conf"
    workflow = ConfigWorkflow(config_file=files, meta_file=str(root / "configs" / "metadata.json"),
                              logging_file=str(logging_file) if logging_file.is_file() else False,
                              workflow_type=STAGE_WORKFLOW_TYPE[stage],
                              **{**overrides, "bundle_root": str(workdir)})
    workflow.initialize()
    try:
        missing = workflow.check_properties()
    except KeyError as error:  # MONAI raises for a required property that is absent from the config
        missing = [str(error).strip("\"'")]
    if missing:
        raise InputError(stage, f"ConfigWorkflow.check_properties: missing or wrongly referenced {missing}")
    workflow.run()
    workflow.finalize()
    return f"check_properties ok, ran {' + '.join(Path(f).name for f in files)} + overrides"


# ---------------------------------------------------------------------------------------------------------------


def _failure(error: BaseException) -> str:
    if isinstance(error, InputError):
        return str(error)
    last = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" at {Path(last.filename).name}:{last.lineno}" if last else ""
    return f"{type(error).__name__}: {str(error)[:600]}{where}"


def verify_bundle(bundle_root: str | os.PathLike, trust_bundle: bool = False,
                  checks: Iterable[str] = ALL_CHECKS, workdir: str | os.PathLike | None = None,
                  echo=None) -> BundleReport:
    """Run the checks on a bundle and return a report (``report.ok``); ``echo`` is called with each result."""
    root = Path(bundle_root).resolve()
    if not root.is_dir():
        raise InputError(bundle_root, "bundle folder not found")
    selected = [c for c in ALL_CHECKS if c in set(checks)]
    report = BundleReport(root)

    def record(name: str, status: str, detail: str = "") -> None:
        result = report.add(name, status, detail)
        if echo is not None:
            echo(str(result))

    settings: dict[str, Any] = {}
    with contextlib.suppress(InputError):
        settings = load_verify_settings(root)
    if "layout" in selected:
        problems = check_layout(root)
        record("layout", "FAIL" if problems else "PASS", "; ".join(problems) or "all required files present")
    if "metadata" in selected:
        problems = check_metadata(root)
        record("metadata", "FAIL" if problems else "PASS",
               "; ".join(problems) or "valid against the bundle-specification schema; version in changelog")
    scan_ok = True
    if "static-scan" in selected or RUNNING_CHECKS & set(selected):
        findings = scan_bundle(root)
        scan_ok = not findings
        if "static-scan" in selected:
            record("static-scan", "PASS" if scan_ok else "FAIL",
                   "every _target_, $ expression, macro and logging entry allowed" if scan_ok
                   else f"{len(findings)} refused:\n    " + "\n    ".join(str(f) for f in findings))
    try:
        settings = load_verify_settings(root)
    except InputError as error:
        record("verify-settings", "FAIL", str(error))
        return report
    if "large-files" in selected:
        problems, summary = check_large_files(root)
        record("large-files", "FAIL" if problems else "PASS", "; ".join(problems) or summary)

    running = [c for c in selected if c in RUNNING_CHECKS]
    if running and not scan_ok and not trust_bundle:
        for name in running:
            for each in ([f"workflow-{stage}" for stage in STAGES] if name == "workflows" else
                         [f"zoo-{check}" for check in ZOO_CHECKS] if name == "zoo" else [name]):
                record(each, "SKIP", "not parsed or run: the static scan failed (pass --trust-bundle to run it "
                                     "anyway)")
        return report
    if "zoo" in selected:
        with tempfile.TemporaryDirectory(prefix=f"zoo_{root.name}_") as folder:
            run_zoo_checks(root, settings, Path(folder), record, _failure)
    net_skip = (settings.get("net_in_out") or {}).get("skip")
    if "net-in-out" in selected and net_skip:
        record("net-in-out", "SKIP", f"opted out in configs/verify_bundle.json: {net_skip}")
    elif "net-in-out" in selected:
        try:
            record("net-in-out", "PASS", check_net_in_out(root, settings))
        except Exception as error:  # noqa: BLE001 - any failure of the bundle's code is a failed check
            record("net-in-out", "FAIL", _failure(error))
    if "torchscript" in selected:
        try:
            record("torchscript", *check_torchscript(root, settings))
        except Exception as error:  # noqa: BLE001
            record("torchscript", "FAIL", _failure(error))
    if "workflows" in selected:
        stacks = stage_configs(root, settings)
        overrides = dict(settings.get("overrides") or {})
        with contextlib.ExitStack() as stack:
            folder = Path(workdir) if workdir else Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"verify_{root.name}_")))
            folder.mkdir(parents=True, exist_ok=True)
            for stage in STAGES:
                name = f"workflow-{stage}"
                if not stacks[stage]:
                    record(name, "SKIP", f"the bundle has no {stage} config")
                    continue
                reason = (settings.get("skip_workflows") or {}).get(stage)
                if reason:
                    record(name, "SKIP", f"opted out in configs/verify_bundle.json: {reason}")
                    continue
                try:
                    record(name, "PASS", run_workflow(root, stage, stacks[stage], folder, overrides))
                except Exception as error:  # noqa: BLE001
                    record(name, "FAIL", _failure(error))
    return report
