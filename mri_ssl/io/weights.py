"""Read weight files safely: checkpoints with ``torch.load(weights_only=True)``, safetensors twins, exported modules.

Below the networks and the engines, so that a network can load its own pretrained weights (``vit``,
``frozen_unet``) without importing the trainers. Writing checkpoints (atomically, as ``.pt`` + ``.safetensors``
pairs) is ``mri_ssl.engines.checkpoint``'s job; the names and the ``pair_id`` stamp both sides agree on are here.

A ``.pt`` and its ``.safetensors`` twin are two writes, so a kill between them can leave a new ``.pt`` beside the twin
of an earlier save: both carry the same random ``pair_id`` (and the epoch), and a loader that finds them different
warns and reads the ``.pt``, which is always written first and so is the newer one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from mri_ssl.errors import InputError

logger = logging.getLogger(__name__)

LATEST, BEST, FINAL = "latest.pt", "best.pt", "final.pt"
# The key, in a ``.pt`` payload and in its safetensors twin's metadata, of the id shared by the two files of one save.
PAIR_ID = "pair_id"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise ``InputError`` naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.name == BEST and (path.parent / FINAL).is_file():
            hint = (f"; the run wrote {FINAL} but no {BEST}, so its validation metric was never computed (e.g. "
                    f"val_interval larger than the number of epochs): validate at least once, or use "
                    f"{path.parent / FINAL}")
        raise InputError(path, "checkpoint not found" + hint)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise InputError(path, f"cannot load checkpoint safely ({type(error).__name__}: {error}); it may be "
                               f"truncated, or hold objects other than tensors and plain data") from error


def safetensors_path(path: str | os.PathLike) -> Path:
    """``models/best.pt`` -> ``models/best.safetensors`` (the released-weights twin of a checkpoint)."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, dict[str, str]]:
    """(state dict, metadata) of a safetensors file; ``InputError`` naming the file if it cannot be read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "weights file not found")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    except Exception as error:
        raise InputError(path, f"cannot read safetensors ({type(error).__name__}: {error})") from error


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:
        raise InputError(path, f"cannot read safetensors ({type(error).__name__}: {error})") from error


def _describe_save(stamp: dict) -> str:
    return f"epoch {stamp['epoch']}" if stamp.get("epoch") is not None else f"save {stamp.get(PAIR_ID) or 'unknown'}"


def consistent_twin(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Path | None:
    """The safetensors twin of ``path`` if it is there and comes from the same save as ``path``, else None.

    A twin alone (released weights without their ``.pt``) is used as it is. When both files are there, their
    ``pair_id`` stamps must agree; when they differ (a save was interrupted between the two writes) a warning names
    both files and their epochs and None is returned, so the caller reads the ``.pt``: it is written first, so it is
    never older than its twin. Files written before the stamps existed (no id in either) are taken as a pair; a
    ``.pt`` that cannot be read leaves the twin as the one readable file (with a warning).
    """
    checkpoint = Path(path)
    twin = safetensors_path(checkpoint)
    if not twin.is_file():
        return None
    if twin == checkpoint or not checkpoint.is_file():
        return twin
    twin_stamp = _safetensors_metadata(twin)
    try:
        payload = load_checkpoint(checkpoint, map_location=map_location)
    except InputError as error:  # the twin is then the only readable file of the pair
        logger.warning("cannot check that %s is from the same save as %s (%s); loading %s", twin, checkpoint,
                       error.problem, twin.name)
        return twin
    stamp = payload if isinstance(payload, dict) else {}
    if twin_stamp.get(PAIR_ID) == stamp.get(PAIR_ID):
        return twin
    logger.warning("%s (%s) and %s (%s) are not from the same save: a save was interrupted between the two files; "
                   "loading %s, which is written first and so holds the newer weights", checkpoint,
                   _describe_save(stamp), twin, _describe_save(twin_stamp), checkpoint.name)
    return None


def load_network_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The network state dict of a checkpoint: from ``X.safetensors`` when present beside ``X.pt`` and from the same
    save (``consistent_twin``), else from ``X.pt``'s ``network`` entry, ``X.pt`` itself when it is a plain state dict,
    or the ``state_dict`` of an exported encoder file (all read with ``weights_only=True``)."""
    twin = consistent_twin(path, map_location)
    if twin is not None:
        return load_safetensors(twin, map_location)[0]
    payload = load_checkpoint(path, map_location=map_location)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload  # a plain state dict, as a bundle's shipped models/model.pt
    if isinstance(payload, dict) and set(payload) == {"config", "state_dict"}:
        return payload["state_dict"]  # an exported encoder file (export_encoder)
    if not isinstance(payload, dict) or "network" not in payload:
        raise InputError(path, "neither a training checkpoint (no 'network' entry) nor a plain state dict")
    return payload["network"]


def load_exported_module(path: str | os.PathLike, module_class: type[torch.nn.Module], config_keys,
                         device: str | torch.device = "cpu",
                         unknown_keys_message: str = "config has unknown keys") -> torch.nn.Module:
    """Rebuild ``module_class(**config)`` from an exported ``{"config", "state_dict"}`` file on ``device``.

    The config may hold only ``config_keys`` (constructor arguments, never code); the ``.safetensors`` twin is read
    when present and from the same save as the file (``consistent_twin``), otherwise the file with
    ``weights_only=True``. Shared by the CNN and ViT encoder loaders.
    """
    twin = consistent_twin(path, device)
    if twin is not None:  # released weights: tensors + JSON config, no pickle at all
        state_dict, metadata = load_safetensors(twin, device)
        try:
            payload = {"config": json.loads(metadata["config"]), "state_dict": state_dict}
        except (KeyError, ValueError) as error:
            raise InputError(twin, "no JSON 'config' in the safetensors metadata") from error
    else:
        payload = load_checkpoint(path, map_location=device)
    if not isinstance(payload, dict) or not {"config", "state_dict"} <= set(payload):
        raise InputError(path, "not an exported encoder: expected a dict with 'config' and 'state_dict'")
    config = dict(payload["config"])
    unknown = set(config) - set(config_keys)
    if unknown:
        raise InputError(path, f"{unknown_keys_message} {sorted(unknown)}")
    module = module_class(**config)
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise InputError(path, f"weights do not fit the encoder config {config}: {error}") from error
    return module.to(device)
