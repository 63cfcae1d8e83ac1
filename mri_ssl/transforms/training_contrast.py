"""The contrast a downstream head trains on: the dataset's fixed image, or a new physics simulation every step.

``fixed`` is the paper's protocol: the head trains on one in-domain contrast (the demo's simulated T1w, IXI's T1w)
and meets other contrasts only at test time. ``simulated`` is domain randomisation with the simulator: each time an
item is drawn, its image is simulated afresh from the subject's qMRI maps with a random sequence and protocol
(``RandSimulateSequence``: FSE / GRE / FLAIR / MPRAGE, protocols from ``sample_protocol``), then corrupted by the
MONAI transforms the pretraining views use (bias field, Gibbs ringing, Rician noise) and z-scored over the volume,
as ``NormalizeIntensityd`` z-scores a fixed image. SynthSeg randomises intensities with a random Gaussian mixture per
label; here the intensities are those of real sequence physics. Cuboid dropout, which the pretraining views also
use, is left out: it would erase image where the labels (or the denoiser's clean target) still show anatomy.

Crop first (``crop``, what the bundles pass): the training crop is drawn first (the bundle's own crop transform, on
the label as in the fixed mode) and only that region is simulated and corrupted, with the same maths as simulating
the whole volume and cropping afterwards:

- the signal equations are voxel-wise, so the cropped maps give the very voxels of the cropped whole-volume image;
- the bias field is the whole volume's polynomial field (Legendre basis over the volume's [-1, 1] coordinates, as
  ``RandBiasField`` draws it), evaluated at the crop's voxels only: the same field, not a field stretched over the
  crop;
- Gibbs ringing is the whole volume's k-space truncation (the same cut-off sphere in the volume's k-space index
  units, so the same ringing period and amplitude in voxels), applied to the crop with a ``gibbs_margin_voxels``
  margin of real anatomy (zeros outside the volume, as the whole volume is padded) that is cut off afterwards. What
  differs: anatomy farther than the margin does not ring into the crop (the ringing of an edge decays as 1/distance),
  and the periodic wrap of the FFT joins the margin's faces, not the volume's (empty) borders, so edges within the
  margin ring a little into the crop from the other side;
- the Rician noise level (relative to the image's standard deviation) and the z-scoring use the whole volume's
  statistics, estimated from the volume simulated and corrupted on a 1-in-``statistics_stride``^3 voxel grid (the
  grid is simulated, biased and noised like the crop; Gibbs ringing, which keeps the mean and changes the standard
  deviation little, is left out of the estimate), so a crop is scaled as the fixed image's crops are.

On the CPU demo's tissue data (99x117x95 voxels, 32^3 crops, the bundle's whole augmentation, one thread) an item
took 0.0145 CPU s against 0.0863 s simulating the whole volume (60 items, seed 0). The volume statistics on the
stride-4 grid were within 3.0 % (mean) and 2.0 % (standard deviation) of the whole volume's (24 simulated images).
With an 8-voxel margin, the crop's ringing had 0.84-1.04x the RMS amplitude of the whole volume's at the same voxels
(alpha 0.3-0.8; 10 crops of the demo's T1w), in a pattern differing by 36-62 % RMS (the anatomy beyond the margin).
Without ``crop`` the whole volume is simulated and corrupted, then z-scored over the volume, and the crop, affine and
intensity transforms that follow act alike in both modes.
"""

from __future__ import annotations

import json
import math
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
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
from mri_ssl.physics.contrast import check_min_tissue_contrast, draw_with_tissue_contrast
from mri_ssl.physics.protocols import SEQUENCES
from mri_ssl.physics.simulate import simulate
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
        crop: a dictionary crop transform (one crop per item, e.g. ``RandCropByLabelClassesd`` on the image and
            label keys): simulate the crop only (see the module docstring). It is called on the item without its
            maps and with a stand-in under ``image_key`` (the first map), whose crop tells where the crop lies.
            None: simulate the whole volume (the crop transform then follows in the pipeline).
        gibbs_margin_voxels: with ``crop``, the margin of anatomy around the crop that Gibbs ringing sees.
        statistics_stride: with ``crop``, the step of the voxel grid the volume's statistics are estimated on.
        min_tissue_contrast: redraw the protocol (not the sequence) until the acquisition's tissue contrast
            (``mri_ssl.physics.contrast.tissue_contrast``: the smallest of the CSF / GM / WM signal gaps relative to
            the brightest, nominal tissues) reaches this floor, in [0, 1/2). 0 (the default) keeps every draw of the
            paper's distributions, number for number.

    ``set_random_state`` seeds the sequence / protocol draw and every corruption, so a seeded run re-simulates the
    same contrasts in the same order.
    """

    def __init__(self, mode: str = "simulated", map_keys: KeysCollection = MAP_KEYS, image_key: str = "image",
                 sequences: Sequence[str] = SEQUENCES, bias_field_prob: float = 0.5, bias_field_coeff: float = 0.3,
                 gibbs_prob: float = 0.5, gibbs_alpha: float = 0.8, rician_prob: float = 0.8,
                 rician_std: float = 0.2, crop: Callable | None = None, gibbs_margin_voxels: int = 8,
                 statistics_stride: int = 4, min_tissue_contrast: float = 0.0) -> None:
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
        for name, value, lowest in (("gibbs_margin_voxels", gibbs_margin_voxels, 0),
                                    ("statistics_stride", statistics_stride, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
                raise InputError(name, f"must be a whole number >= {lowest}, got {value!r}")
        if crop is not None and not callable(crop):
            raise InputError("crop", f"must be a dictionary transform or None, got {type(crop).__name__}")
        # Only the simulated mode uses the crop; in the fixed mode the pipeline holds (and seeds) it.
        self.crop = crop if self.mode == "simulated" else None
        self.gibbs_margin = int(gibbs_margin_voxels)
        self.statistics_stride = int(statistics_stride)
        self.min_tissue_contrast = check_min_tissue_contrast(min_tissue_contrast)
        self.probabilities = (float(bias_field_prob), float(gibbs_prob), float(rician_prob))
        self.bias_field_coeff, self.gibbs_alpha, self.rician_std = (float(bias_field_coeff), float(gibbs_alpha),
                                                                    float(rician_std))
        self.bias_degree = 3
        self._gibbs_distances: dict = {}
        self.set_random_state()

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        # One random stream for the acquisition and every corruption: one seed decides them all.
        self.simulate.set_random_state(state=self.R)
        for transform in self.corruptions:
            transform.set_random_state(state=self.R)
        if getattr(self, "crop", None) is not None and isinstance(self.crop, Randomizable):
            self.crop.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        """Draw the sequence, then its protocol (again while below ``min_tissue_contrast``); the simulator keeps them.

        Only the protocol is redrawn, so the floor leaves the sequences' probabilities as the paper draws them (as the
        pretraining views' floor does). Redrawing the sequence too favoured MPRAGE, whose protocols pass most often:
        0.33 of the kept draws instead of 0.25 at a floor of 0.1, 0.47 at 0.2 (4000 draws).
        """
        simulator = self.simulate.simulator
        simulator.randomize_sequence()

        def draw() -> tuple[str, dict]:
            simulator.randomize_protocol()
            return simulator.sequence, simulator.protocol

        draw_with_tissue_contrast(draw, self.min_tissue_contrast, simulator.map_names,
                                  f"{simulator.sequence} protocols")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        if self.mode == "fixed":
            return dict(data)
        if self.crop is not None:
            return self._simulate_crop(data)
        d = dict(data)
        maps = self.simulate._stacked_maps(d)  # sets the simulator's map names, which the contrast floor reads
        self.randomize()
        image = self.simulate.simulator(maps, randomize=False)
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

    # ------------------------------------------------------------------------------------------ crop-first path

    def _simulate_crop(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        maps = self.simulate._stacked_maps(data)  # (C, *volume), the channel names set on the simulator
        names = self.simulate.simulator.map_names
        volume_shape = tuple(int(n) for n in maps.shape[1:])
        volume_affine = maps.affine if isinstance(maps, MetaTensor) else torch.eye(4, dtype=torch.float64)
        plain_maps = maps.as_tensor() if isinstance(maps, MetaTensor) else torch.as_tensor(maps)
        plain_maps = plain_maps if plain_maps.is_floating_point() else plain_maps.float()
        self.randomize()
        sequence, protocol = self.simulate.simulator.sequence, self.simulate.simulator.protocol

        rest = {key: value for key, value in data.items() if key not in set(self.keys)}
        rest[self.image_key] = MetaTensor(plain_maps[:1], affine=volume_affine)  # stand-in: its crop is the box
        cropped = self.crop(rest)
        if isinstance(cropped, (list, tuple)):
            if len(cropped) != 1:
                raise InputError("crop", f"simulating the crop needs one crop per item, got {len(cropped)}")
            cropped = cropped[0]
        d = dict(cropped)
        stand_in = d[self.image_key]
        start = crop_start(volume_affine, stand_in.affine if isinstance(stand_in, MetaTensor) else volume_affine)
        crop_shape = tuple(int(n) for n in stand_in.shape[1:])

        # The draws, in a fixed order from the one random stream.
        bias_coefficients = gibbs_alpha = rician_fraction = None
        if self.R.rand() < self.probabilities[0]:
            bias_coefficients = self.R.uniform(-self.bias_field_coeff, self.bias_field_coeff,
                                               bias_coefficient_count(self.bias_degree, len(volume_shape)))
        if self.R.rand() < self.probabilities[1]:
            gibbs_alpha = float(self.R.uniform(0.0, self.gibbs_alpha))
        if self.R.rand() < self.probabilities[2]:
            rician_fraction = float(self.R.uniform(0.0, self.rician_std))

        margin = self.gibbs_margin if gibbs_alpha is not None else 0
        region_start = tuple(s - margin for s in start)
        region_shape = tuple(n + 2 * margin for n in crop_shape)
        region = _region(plain_maps, region_start, region_shape)
        image = simulate({name: region[i] for i, name in enumerate(names)}, sequence, protocol,
                         fused=False, validate=False)
        # The volume's statistics from a coarse grid of the same simulated, corrupted volume.
        stride = self.statistics_stride
        offset = stride // 2  # the grid's voxels centred in their cells
        grid = plain_maps[(slice(None),) + (slice(offset, None, stride),) * len(volume_shape)]
        sample = simulate({name: grid[i] for i, name in enumerate(names)}, sequence, protocol,
                          fused=False, validate=False)
        if bias_coefficients is not None:
            image = image * bias_field(bias_coefficients, self.bias_degree, volume_shape, region_start,
                                       region_shape).to(image.dtype)
            sample = sample * bias_field(bias_coefficients, self.bias_degree, volume_shape,
                                         (offset,) * len(volume_shape), tuple(sample.shape),
                                         step=stride).to(sample.dtype)
        if gibbs_alpha is not None:
            image = self._gibbs(image, gibbs_alpha, volume_shape)
        image = image[tuple(slice(margin, margin + n) for n in crop_shape)]
        if rician_fraction is not None:
            sigma = rician_fraction * float(sample.std())
            image = self._rician(image, sigma)
            sample = self._rician(sample, sigma)
        mean, std = float(sample.mean()), float(sample.std())
        image = (image - mean) / (std if std > 0 else 1.0)  # NormalizeIntensity's z-score, with the volume's values

        meta = dict(stand_in.meta) if isinstance(stand_in, MetaTensor) else {}
        meta["sequence"] = sequence
        meta["protocol"] = json.dumps(
            {k: float(v) for k, v in protocol.items()}, sort_keys=True)  # text: collates across sequences
        d[self.image_key] = MetaTensor(image[None].float().contiguous(), meta=meta)
        return d

    def _rician(self, image: torch.Tensor, sigma: float) -> torch.Tensor:
        """``RandRicianNoise``'s magnitude of the image plus complex Gaussian noise of standard deviation ``sigma``."""
        shape = tuple(image.shape)
        real = torch.from_numpy(self.R.normal(0.0, sigma, size=shape).astype(np.float32))
        imaginary = torch.from_numpy(self.R.normal(0.0, sigma, size=shape).astype(np.float32))
        return torch.sqrt((image + real) ** 2 + imaginary ** 2)

    def _gibbs(self, image: torch.Tensor, alpha: float, volume_shape: tuple[int, ...]) -> torch.Tensor:
        """k-space truncation of ``image`` with the volume's cut-off: ``GibbsNoise`` keeps the frequencies within
        ``(1 - alpha) max(volume) sqrt(2) / 2`` of the centre, in the volume's k-space index units; a frequency of f
        cycles per voxel along an axis of the volume's size S is at index f S there, whatever the crop's size."""
        key = (tuple(image.shape), volume_shape)
        distance = self._gibbs_distances.get(key)
        if distance is None:
            axes = [torch.fft.fftfreq(n, dtype=torch.float64) * size
                    for n, size in zip(image.shape[:-1], volume_shape[:-1])]
            axes.append(torch.fft.rfftfreq(image.shape[-1], dtype=torch.float64) * volume_shape[-1])
            grids = torch.meshgrid(*axes, indexing="ij")
            distance = self._gibbs_distances[key] = torch.sqrt(sum(g ** 2 for g in grids))
        radius = (1.0 - alpha) * max(volume_shape) * math.sqrt(2.0) / 2.0
        spectrum = torch.fft.rfftn(image)
        spectrum = spectrum * (distance <= radius)
        return torch.fft.irfftn(spectrum, s=tuple(image.shape))


def crop_start(volume_affine, crop_affine) -> tuple[int, ...]:
    """The voxel index in the volume of a crop's first voxel, from the two affines (a crop only translates)."""
    volume = torch.as_tensor(volume_affine, dtype=torch.float64)
    crop = torch.as_tensor(crop_affine, dtype=torch.float64)
    offset = torch.linalg.solve(volume[:3, :3], crop[:3, 3] - volume[:3, 3])
    return tuple(int(round(float(v))) for v in offset)


def _region(maps: torch.Tensor, start: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """``maps[:, start:start + shape]`` along each spatial axis, zeros where the region leaves the volume."""
    volume_shape = maps.shape[1:]
    inside = tuple(slice(max(0, s), min(size, s + n)) for s, n, size in zip(start, shape, volume_shape))
    region = maps[(slice(None),) + inside]
    padding = []
    for s, n, size in reversed(list(zip(start, shape, volume_shape))):
        padding += [max(0, -s), max(0, s + n - size)]
    return F.pad(region, padding) if any(padding) else region


def bias_coefficient_count(degree: int, spatial_dims: int) -> int:
    """The number of polynomial coefficients ``RandBiasField`` draws (all powers of total degree <= ``degree``)."""
    return int(round(np.prod([(degree + k) / k for k in range(1, spatial_dims + 1)])))


def bias_field(coefficients, degree: int, volume_shape: Sequence[int], start: Sequence[int],
               shape: Sequence[int], step: int = 1) -> torch.Tensor:
    """``exp`` of ``RandBiasField``'s 3-D field of ``volume_shape`` (its Legendre basis on the volume's
    ``linspace(-1, 1)`` coordinates, coefficients in its order), evaluated on the voxels ``start + step * i`` for
    ``i < shape``; voxels outside the volume get the polynomial's continuation."""
    if len(volume_shape) != 3:
        raise InputError("maps", f"the crop-wise bias field is 3-D; got a volume of shape {tuple(volume_shape)}")
    powers = [(i, j, k) for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    matrix = np.zeros((degree + 1,) * 3)
    index = np.array(powers)
    matrix[index[:, 0], index[:, 1], index[:, 2]] = coefficients
    coords = [-1.0 + 2.0 * (s + step * np.arange(n)) / max(size - 1, 1)
              for s, n, size in zip(start, shape, volume_shape)]
    return torch.from_numpy(np.exp(np.polynomial.legendre.leggrid3d(*coords, matrix)))
