"""The MONAI model zoo's own bundle checks, done the zoo's way (Project-MONAI/model-zoo, ``ci/verify_bundle.py``).

The zoo's CI, on a submitted bundle folder, in this order:

- ``files``: ``LICENSE`` and ``configs/metadata.json`` exist, and so do the preferred ``models/model.pt`` and
  ``configs/inference.(json|yaml|yml)`` (large_files.yml entries are downloaded first, hash-checked).
- ``version``: ``version`` and ``changelog`` in the metadata, the version a key of the changelog.
- ``metadata``: MONAI's ``verify_metadata`` against the schema the metadata names (here the project's copy of it,
  :data:`mri_ssl.trust.metadata_schema.METADATA_SCHEMA`: the zoo downloads it, which cannot work offline); and the
  package fields as MONAI reads them: ``optional_packages_version`` is MONAI's deprecated name of
  ``required_packages_version`` and *replaces* it when both are present, so a bundle must have one.
- ``properties``: ``ConfigWorkflow(workflow_type="infer")`` on ``configs/inference.json`` **alone** (with the
  metadata and logging config), ``initialize()`` and ``check_properties()``: device, network_def, dataset, inferer,
  evaluator ... must be defined there, not in another config it is usually stacked on.
- ``net-in-out``: ``monai.bundle.verify_net_in_out`` on ``network_def`` of ``configs/inference.json`` alone with the
  defaults ``n = p = any = 1`` (a spatial shape ``"16*n"`` becomes 16): the metadata's shapes must hold at n = 1.
- ``torchscript``: ``monai.bundle.ckpt_export`` of ``network_def`` with the weights of ``models/model.pt``, which
  **scripts** the network (``torch.jit.script``, no tracing), then ``torch.jit.load`` of a shipped ``models/model.ts``.

The zoo skips ``net-in-out`` / ``torchscript`` only for bundles on its exclusion lists (``ci/bundle_custom_data.py``,
e.g. detection or two-input networks); a bundle asks for the same exclusion with a reason in
``configs/verify_bundle.json`` (``"net_in_out": {"skip": ...}``, ``"torchscript": {"skip": ...}``), reported as SKIP.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

from mri_ssl.errors import InputError
from mri_ssl.trust.metadata_schema import METADATA_SCHEMA
from mri_ssl.trust.packing import EXCLUDED_DIRS

ZOO_CHECKS = ("files", "version", "metadata", "properties", "net-in-out", "torchscript")
WEIGHTS = "models/model.pt"
SHIPPED_TORCHSCRIPT = "models/model.ts"


def inference_config(root: Path) -> Path | None:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    return None


def _metadata(root: Path) -> dict[str, Any]:
    try:
        metadata = json.loads((root / "configs" / "metadata.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(root / "configs" / "metadata.json", f"cannot be read ({error})") from error
    if not isinstance(metadata, dict):
        raise InputError(root / "configs" / "metadata.json", "expected a JSON object")
    return metadata


def check_files(root: Path) -> str:
    missing = [name for name in ("LICENSE", "configs/metadata.json", WEIGHTS) if not (root / name).is_file()]
    if inference_config(root) is None:
        missing.append("configs/inference.json")
    if missing:
        hint = " (run `mri-ssl fetch-weights` for weights listed in large_files.yml)" if WEIGHTS in missing else ""
        raise InputError(root, f"missing {', '.join(missing)}{hint}")
    return f"LICENSE, configs/metadata.json, configs/{inference_config(root).name}, {WEIGHTS} present"


def check_version(root: Path) -> str:
    metadata = _metadata(root)
    for key in ("version", "changelog"):
        if key not in metadata:
            raise InputError(root / "configs" / "metadata.json", f"'{key}' is missing")
    if metadata["version"] not in metadata["changelog"]:
        raise InputError(root / "configs" / "metadata.json",
                         f"version {metadata['version']!r} is missing in 'changelog'")
    return f"version {metadata['version']} in changelog"


def check_metadata(root: Path) -> str:
    from monai.bundle import verify_metadata

    metadata = _metadata(root)
    if "required_packages_version" in metadata and "optional_packages_version" in metadata:
        raise InputError(root / "configs" / "metadata.json",
                         "has both required_packages_version and optional_packages_version; MONAI reads the second as "
                         "the deprecated name of the first and replaces it, so keep one (required_packages_version)")
    with tempfile.TemporaryDirectory(prefix="zoo_schema_") as folder:
        schema = Path(folder) / "schema.json"
        schema.write_text(json.dumps(METADATA_SCHEMA))
        verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))
    return "MONAI verify_metadata against the bundle-specification schema; one package-version field"


def check_properties(root: Path) -> str:
    """The zoo's inference property check on ``configs/inference.json`` alone (bundle_root: the bundle folder)."""
    from monai.bundle import ConfigWorkflow

    config = inference_config(root)
    if config is None:
        raise InputError(root, "no configs/inference.json")
    logging_file = root / "configs" / "logging.conf"
    workflow = ConfigWorkflow(workflow_type="infer", config_file=str(config),
                              meta_file=str(root / "configs" / "metadata.json"),
                              logging_file=str(logging_file) if logging_file.is_file() else None,
                              bundle_root=str(root))
    workflow.initialize()
    try:
        missing = workflow.check_properties()
    except KeyError as error:  # MONAI raises for a required property absent from the config
        missing = [str(error).strip("\"'")]
    if missing:
        raise InputError(config, f"ConfigWorkflow(infer).check_properties: missing or wrongly referenced {missing}")
    return f"ConfigWorkflow(infer) on configs/{config.name} alone: initialize + check_properties ok"


def check_net_in_out(root: Path) -> str:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                      config_file=str(inference_config(root)), bundle_root=str(root))
    return "verify_net_in_out on inference.json alone at n = p = any = 1"


def check_torchscript(root: Path) -> str:
    import torch
    from monai.bundle import ckpt_export

    with tempfile.TemporaryDirectory(prefix="zoo_ts_") as folder:
        ckpt_export(net_id="network_def", filepath=str(Path(folder) / "verify_model.ts"),
                    ckpt_file=str(root / WEIGHTS), meta_file=str(root / "configs" / "metadata.json"),
                    config_file=str(inference_config(root)), bundle_root=str(root))
    detail = f"ckpt_export scripted network_def with {WEIGHTS}"
    if (root / SHIPPED_TORCHSCRIPT).is_file():
        torch.jit.load(str(root / SHIPPED_TORCHSCRIPT), map_location="cpu")
        detail += f"; {SHIPPED_TORCHSCRIPT} loads"
    return detail


def fresh_copy(root: Path, workdir: Path) -> Path:
    """The bundle as a zoo reviewer gets it: its files without run outputs (demo data, logs, predictions, caches)."""
    import shutil

    target = workdir / "zoo_copy" / root.name
    shutil.rmtree(target, ignore_errors=True)
    ignored = [d for d in EXCLUDED_DIRS if d != "models"]
    shutil.copytree(root, target, ignore=shutil.ignore_patterns(*ignored, "*.partial*"))
    return target


def run_zoo_checks(bundle: Path, settings: dict[str, Any], workdir: Path,
                   record: Callable[[str, str, str], None], failure: Callable[[BaseException], str]) -> None:
    """Each zoo check on a fresh copy of ``bundle`` in ``workdir``, as ``record("zoo-NAME", PASS | FAIL | SKIP,
    detail)``. Every check runs even after an earlier one failed: separate verdicts say more than the first error.
    As the zoo's ``verify``, the copy's folder is first on ``sys.path`` while the checks run (custom code)."""
    import sys

    root = fresh_copy(bundle, workdir)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("files", lambda: check_files(root)),
        ("version", lambda: check_version(root)),
        ("metadata", lambda: check_metadata(root)),
        ("properties", lambda: check_properties(root)),
        ("net-in-out", lambda: check_net_in_out(root)),
        ("torchscript", lambda: check_torchscript(root)),
    ]
    exclusions = {"net-in-out": (settings.get("net_in_out") or {}).get("skip"),
                  "torchscript": (settings.get("torchscript") or {}).get("skip")}
    sys.path.insert(0, str(root))
    try:
        for name, check in checks:
            if exclusions.get(name):
                record(f"zoo-{name}", "SKIP", f"excluded as the zoo excludes such bundles (configs/verify_bundle.json):"
                                              f" {exclusions[name]}")
                continue
            try:
                record(f"zoo-{name}", "PASS", check())
            except Exception as error:  # noqa: BLE001 - any failure of the bundle's code is a failed check
                record(f"zoo-{name}", "FAIL", failure(error))
    finally:
        sys.path.remove(str(root))
