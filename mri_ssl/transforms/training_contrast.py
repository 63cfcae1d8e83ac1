"""The contrast a downstream head trains on: the dataset's fixed image, or a new physics simulation every step.

``fixed`` is the paper's protocol: the head trains on one in-domain contrast (the demo's simulated T1w, IXI's T1w)
and meets other contrasts only at test time. ``simulated`` is domain randomisation with the simulator: each time an
item is drawn, its image is simulated afresh from the subject's qMRI maps with a random sequence and protocol
(``RandSimulateSequence``: FSE / GRE / FLAIR / MPRAGE, protocols from ``sample_protocol``), then corrupted by the
MONAI transforms the pretraining views use (bias field, Gibbs ringing, Rician noise) and z-scored over the volume,
as ``NormalizeIntensityd`` z-scores a fixed image. SynthSeg randomises intensities with a random Gaussian mixture per
label; here the intensities are those of real sequence physics. Cuboid dropout, which the pretraining views also
use, is left out: it would erase image where the labels (or the denoiser's clean target) still show anatomy.

The whole volume is simulated (not the training crop) so that the z-scoring sees the same field of view as the
fixed image's, and the crop, affine and intensity transforms that follow act alike in both modes.
"""

from __future__ import annotations

import json
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    NormalizeIntensity,
    RandBiasField,
    RandGibbsNoise,
    Randomizable,
    RandRicianNoise,
)

from mri_ssl.errors import InputError
from mri_ssl.physics.protocols import SEQUENCES
from mri_ssl.transforms.simulate_sequence import RandSimulateSequenced

__all__ = ["TRAINING_CONTRASTS", "MAP_KEYS", "RandTrainingContrastd", "check_training_contrast",
           "training_keys"]

TRAINING_CONTRASTS = ("fixed", "simulated")
MAP_KEYS = ("pd", "r1", "r2", "r2s", "mt")  # the map keys of the embedded demo data's entries


def _checked_mode(mode: str) -> str:
    if mode not in TRAINING_CONTRASTS:
        raise InputError("training_contrast", f"expected one of {', '.join(TRAINING_CONTRASTS)}, got {mode!r}")
    return mode


def training_keys(mode: str, image_key: str, label_key: str | None, map_keys: Sequence[str] = MAP_KEYS
                  ) -> list[str]:
    """The entry keys a training item is loaded from: the image (``fixed``) or the qMRI maps (``simulated``), then
    the label (if any)."""
    loaded = [image_key] if _checked_mode(mode) == "fixed" else [str(k) for k in map_keys]
    return loaded + ([label_key] if label_key else [])


def check_training_contrast(datalist: str, mode: str, map_keys: Sequence[str] = MAP_KEYS,
                            split: str = "training") -> None:
    """Before training: in ``simulated`` mode, every ``split`` entry of ``datalist`` must name the qMRI maps.

    A dataset of images only (IXI, a hospital folder) cannot be re-simulated; this says so and names the missing
    keys instead of training on an empty or partial list.
    """
    if _checked_mode(mode) == "fixed":
        return
    try:
        entries = json.loads(open(datalist).read()).get(split) or []
    except (OSError, ValueError) as error:
        raise InputError(datalist, f"cannot read the datalist JSON ({error})") from error
    lacking = [index for index, entry in enumerate(entries) if not all(key in entry for key in map_keys)]
    if not entries or lacking:
        first = entries[lacking[0]] if lacking else {}
        missing = [key for key in map_keys if key not in first]
        raise InputError(datalist, f"training_contrast 'simulated' simulates each {split} image from qMRI maps "
                                   f"{list(map_keys)}, but {len(lacking) if entries else 'all'} of "
                                   f"{len(entries)} {split} entries lack them (e.g. {missing}); use "
                                   f"training_contrast 'fixed' for a dataset of images")


class RandTrainingContrastd(Randomizable, MapTransform):
    """Write the training image of an item: unchanged (``fixed``) or simulated from its maps (``simulated``).

    Args:
        mode: ``"fixed"`` (pass the item through) or ``"simulated"``.
        map_keys: the items' keys of the channel-first qMRI maps, each key named after its map (pd, r1, r2, r2s,
            mt; pd, r1, r2s required). Removed from the item once the image is made.
        image_key: where the simulated image goes, ``(1, *spatial)`` float32, z-scored over the volume.
        sequences: the sequences drawn from, uniformly.
        bias_field_prob, bias_field_coeff: ``RandBiasField`` (degree 3, coefficients in ``[-coeff, coeff]``).
        gibbs_prob, gibbs_alpha: ``RandGibbsNoise``, truncation fraction drawn in ``[0, gibbs_alpha]``.
        rician_prob, rician_std: ``RandRicianNoise``, standard deviation up to ``rician_std`` times the image's.
            The defaults are the pretraining views' (``ContrastiveViewPair``).

    ``set_random_state`` seeds the sequence / protocol draw and every corruption, so a seeded run re-simulates the
    same contrasts in the same order.
    """

    def __init__(self, mode: str = "simulated", map_keys: KeysCollection = MAP_KEYS, image_key: str = "image",
                 sequences: Sequence[str] = SEQUENCES, bias_field_prob: float = 0.5, bias_field_coeff: float = 0.3,
                 gibbs_prob: float = 0.5, gibbs_alpha: float = 0.8, rician_prob: float = 0.8,
                 rician_std: float = 0.2) -> None:
        MapTransform.__init__(self, map_keys, allow_missing_keys=True)  # r2 and mt are optional maps
        self.mode = _checked_mode(mode)
        self.image_key = image_key
        self.simulate = RandSimulateSequenced(keys=self.keys, sequences=sequences, output_key=image_key,
                                              validate=False)
        for name, value in (("bias_field_prob", bias_field_prob), ("gibbs_prob", gibbs_prob),
                            ("rician_prob", rician_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(name, f"a probability must be in [0, 1], got {value}")
        for name, value in (("bias_field_coeff", bias_field_coeff), ("gibbs_alpha", gibbs_alpha),
                            ("rician_std", rician_std)):
            if not np.isfinite(float(value)) or float(value) < 0 or (name == "gibbs_alpha" and float(value) > 1):
                raise InputError(name, f"must be a finite number >= 0{' and <= 1' if name == 'gibbs_alpha' else ''}, "
                                       f"got {value}")
        self.corruptions = [
            RandBiasField(degree=3, coeff_range=(-float(bias_field_coeff), float(bias_field_coeff)),
                          prob=float(bias_field_prob)),
            RandGibbsNoise(prob=float(gibbs_prob), alpha=(0.0, float(gibbs_alpha))),
            RandRicianNoise(prob=float(rician_prob), mean=0.0, std=float(rician_std), relative=True,
                            channel_wise=False, sample_std=True),
        ]
        self.normalize = NormalizeIntensity()
        self.set_random_state()

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        # One random stream for the acquisition and every corruption: one seed decides them all.
        self.simulate.set_random_state(state=self.R)
        for transform in self.corruptions:
            transform.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        self.simulate.randomize()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        if self.mode == "fixed":
            return dict(data)
        d = self.simulate(data)
        image = d[self.image_key]
        meta = dict(image.meta) if isinstance(image, MetaTensor) else {}
        # Protocols of different sequences have different fields, which batch collation cannot stack: keep them as
        # text (the sequence name and protocol stay in the item's metadata for inspection).
        meta["protocol"] = json.dumps(meta.get("protocol", {}), sort_keys=True)
        plain = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        for transform in self.corruptions:
            plain = torch.as_tensor(transform(plain)).float()
        plain = torch.as_tensor(self.normalize(plain)).float()
        for key in self.key_iterator(d):
            del d[key]  # the maps have served; the spatial transforms that follow need not carry them
        d[self.image_key] = MetaTensor(plain, meta=meta)  # the meta carry the affine
        return d
