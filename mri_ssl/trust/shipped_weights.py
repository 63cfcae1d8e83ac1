"""`mri-ssl train-shipped-weights BUNDLE`: the small weights a bundle ships as ``models/model.pt``.

Each bundle ships the weights that its own CPU recipe (``configs/cpu_demo.json`` over the training config) trains on
its embedded demo data, so ``configs/inference.json`` runs out of the box and the model zoo's file check finds
``models/model.pt``. They are demo weights: they show the pipeline works end to end and give a starting point, not
the paper's results (paper-size weights are large files, listed by URL in large_files.yml once published).

A recipe is a list of ``monai.bundle run`` steps, each in a fresh ``bundle_root`` under a temporary folder (so the
bundle folder gets no demo data, logs or checkpoints), then one checkpoint of the last step is reduced to the plain
state dict of the inference config's ``network_def``, written atomically to ``models/model.pt``, and
``large_files.yml`` gets its sha256. Steps whose network needs an earlier step's output (a downstream bundle under
the pretrained encoder) name it with ``{step_name}`` in their overrides.

Rerun it whenever a recipe or a network changes; it is deterministic up to the CPU's floating point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from mri_ssl.errors import InputError
from mri_ssl.io.atomic import atomic_output, atomic_write_text
from mri_ssl.io.hashing import sha256_file
from mri_ssl.io.weights import load_network_weights
from mri_ssl.text.tokenizer_state import load_tokenizer

WEIGHTS = "models/model.pt"
# Where the repository's files are published; the weights are committed, so the model zoo's download step finds
# them present with a matching sha256 and never fetches this URL.
DEFAULT_URL_BASE = "https://github.com/mri-ssl/mri_ssl/raw/main"


@dataclass(frozen=True)
class Step:
    """One ``monai.bundle run`` of ``bundle``'s ``configs`` (cpu_demo.json last) in its own bundle_root."""

    name: str
    bundle: str
    configs: tuple[str, ...]
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    steps: tuple[Step, ...]
    checkpoint: str  # in the last step's bundle_root
    key_prefix: str = ""  # keep only these keys of the checkpoint's network, prefix removed
    trained_on: str = ""
    # Also write models/tokenizer.json from the checkpoint (a text model's vocabulary fixes its embedding size).
    tokenizer: bool = False


SHIPPED_ENCODER = "{shipped_encoder}"  # replaced by an encoder file exported from mri_ssl_pretrain's models/model.pt

RECIPES: dict[str, Recipe] = {
    "mri_ssl_pretrain": Recipe(
        (Step("pretrain", "mri_ssl_pretrain", ("configs/train.json", "configs/cpu_demo.json")),),
        "models/best.pt", "encoder.",
        "the embedded 2 mm MNI152 qMRI phantom: contrastive + reconstruction pretraining on simulated sequences"),
    "mri_segmentation": Recipe(
        (Step("train", "mri_segmentation", ("configs/train.json", "configs/cpu_demo.json"),
              {"encoder_path": SHIPPED_ENCODER}),), "models/best.pt",
        trained_on="the embedded 2 mm MNI152 phantom: decoder trained on simulated T1w with its tissue labels under "
                   "the frozen encoder that mri_ssl_pretrain ships"),
    "mri_denoising": Recipe(
        (Step("train", "mri_denoising", ("configs/train.json", "configs/cpu_demo.json"),
              {"encoder_path": SHIPPED_ENCODER}),), "models/best.pt",
        trained_on="the embedded 2 mm MNI152 phantom: decoder trained to predict added Gaussian noise (sigma 0.2) "
                   "under the frozen encoder that mri_ssl_pretrain ships"),
    "fundus_camcontrast": Recipe(
        (Step("stage1", "fundus_camcontrast", ("configs/stage1.json", "configs/cpu_demo.json")),),
        "models/stage1/best.pt",
        trained_on="the embedded fundus demo images (skimage retina with synthetic lesions, 128 px): stage-1 CAM "
                   "classifier, normal / abnormal"),
    "cardiac_sequence_classification": Recipe(
        (Step("pretrain", "cardiac_sequence_classification", ("configs/pretrain.json", "configs/cpu_demo.json")),
         Step("train", "cardiac_sequence_classification", ("configs/train.json", "configs/cpu_demo.json"),
              {"encoder_path": "{pretrain}/models/simsiam/encoder_final.pt"})), "models/best.pt",
        trained_on="the embedded cardiac phantom studies: SimSiam pretraining then fine-tuning with BCE over "
                   "T1 / T2 / Cine / LGE / Other"),
    "cmr_video_text": Recipe(
        (Step("train", "cmr_video_text", ("configs/train.json", "configs/cpu_demo.json")),),
        "models/frames8_cine_lge_seed0/best.pt", tokenizer=True,
        trained_on="the embedded CMR phantom studies (500 studies at 48x48, 300 for training, cine + LGE, 8 frames): "
                   "CLIP loss against their report impressions, 5 epochs, the epoch with the best validation RSUM; "
                   "the word vocabulary of their training reports is models/tokenizer.json"),
}
TOKENIZER = "models/tokenizer.json"


def bundles_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "bundles"


def inference_network(bundle: Path) -> torch.nn.Module:
    """``network_def`` of the bundle's standalone ``configs/inference.json``, the network model.pt must fit."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def export_shipped_encoder(bundles: Path, path: Path) -> Path:
    """mri_ssl_pretrain's shipped ``models/model.pt`` as an exported encoder file (what downstream configs load)."""
    from mri_ssl.engines.checkpoint import export_encoder  # lazy: mri_ssl.engines takes ~5 s to import

    pretrain = bundles / "mri_ssl_pretrain"
    if not (pretrain / WEIGHTS).is_file():
        raise InputError(pretrain / WEIGHTS, "missing: run `mri-ssl train-shipped-weights mri_ssl_pretrain` first")
    encoder = inference_network(pretrain)
    encoder.load_state_dict(torch.load(pretrain / WEIGHTS, map_location="cpu", weights_only=True))
    return export_encoder(encoder, path)


def run_step(step: Step, bundles: Path, workdirs: dict[str, Path], root: Path) -> Path:
    workdir = root / step.name
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = bundles / step.bundle
    configs = [str(bundle / c) for c in step.configs]
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs),
               "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(workdir),
               "--progress_bar", "false"]
    for key, value in step.overrides.items():
        value = value.format(**{k: str(v) for k, v in workdirs.items()}) if isinstance(value, str) else value
        command += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    print(f"[{step.name}] {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=bundle, check=True)
    return workdir


def network_state(checkpoint: Path, key_prefix: str) -> dict[str, torch.Tensor]:
    state = load_network_weights(checkpoint)
    if key_prefix:
        state = {k[len(key_prefix):]: v for k, v in state.items() if k.startswith(key_prefix)}
    if not state:
        raise InputError(checkpoint, f"no weights under {key_prefix!r}")
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def record_large_file(bundle: Path, relative: str, digest: str, url: str) -> None:
    """Put ``relative`` with its sha256 into large_files.yml (replacing an older entry of the same path)."""
    path = bundle / "large_files.yml"
    text = path.read_text() if path.is_file() else ""
    header = (f"# {relative}: small demo weights made by `mri-ssl train-shipped-weights {bundle.name}`\n"
              "# (docs/README.md says what they were trained on). They are committed with the bundle, so a download\n"
              "# finds the file in place with a matching sha256 and skips it. Paper-size weights are added here by\n"
              "# URL once published.\n")
    content = yaml.safe_load(text) or {}
    entries = [e for e in content.get("large_files") or [] if e.get("path") != relative]
    entries.append({"path": relative, "url": url, "hash_val": digest, "hash_type": "sha256"})
    atomic_write_text(path, header + yaml.safe_dump({"large_files": entries}, sort_keys=False))


def train_shipped_weights(name: str, bundles: str | os.PathLike | None = None,
                          workdir: str | os.PathLike | None = None, url_base: str | None = None) -> Path:
    """Run ``name``'s recipe and write ``bundles/name/models/model.pt``; returns its path."""
    if name not in RECIPES:
        raise InputError("bundle", f"no shipped-weights recipe for {name!r} (recipes: {', '.join(sorted(RECIPES))})")
    recipe = RECIPES[name]
    bundles = Path(bundles) if bundles else bundles_dir()
    target = bundles / name / WEIGHTS
    with tempfile.TemporaryDirectory(prefix=f"shipped_{name}_", dir=workdir) as folder:
        workdirs: dict[str, Path] = {}
        if any(SHIPPED_ENCODER in str(v) for step in recipe.steps for v in step.overrides.values()):
            workdirs["shipped_encoder"] = export_shipped_encoder(bundles, Path(folder) / "shipped_encoder.pt")
        for step in recipe.steps:
            workdirs[step.name] = run_step(step, bundles, workdirs, Path(folder))
        checkpoint = workdirs[recipe.steps[-1].name] / recipe.checkpoint
        state = network_state(checkpoint, recipe.key_prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        if recipe.tokenizer:  # written first: inference.json builds its network from this vocabulary
            load_tokenizer(checkpoint).save(bundles / name / TOKENIZER)
    inference_network(bundles / name).load_state_dict(state)  # strict: the weights fit inference.json as it is
    with atomic_output(target) as temporary:
        torch.save(state, temporary)
    digest = sha256_file(target)
    record_large_file(bundles / name, WEIGHTS, digest,
                      f"{(url_base or DEFAULT_URL_BASE).rstrip('/')}/bundles/{name}/{WEIGHTS}")
    print(f"{name}: wrote {target} ({target.stat().st_size / 1024:.0f} KiB, {len(state)} tensors, sha256 {digest}); "
          f"trained on {recipe.trained_on}")
    return target
