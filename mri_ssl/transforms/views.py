"""Two augmented views per subject for sequence-invariant contrastive pretraining (Chalcroft et al., MIDL 2025).

``ContrastiveViewPair`` takes a collated batch of qMRI maps (or real images) on the training device and returns two
views per item plus the clean reconstruction targets, on the same device. It runs inside the trainer's iteration,
after collation, so the simulation and augmentation use the training device instead of starving it from CPU
workers.

View modes (the paper's three models):

======== ==============================================================================================
base     two views of one image: a real image (``input_is_image=True``) or one MPRAGE simulated per item
         with a random MPRAGE protocol; both views share that protocol
seqaug   one random sequence and protocol per item (sequence uniform over ``sequences``); both views are
         that same acquisition, differently augmented
seqinv   two independently drawn sequences and protocols per item, one per view; a pair whose two draws
         are identical (same sequence and the same numbers) is redrawn, so the views always differ in
         acquisition
======== ==============================================================================================

Per view, in this order:

1. **Spatial**, on the maps (C channels, bilinear): a random affine (rotation up to ``rotate_range_deg`` degrees
   about each axis, shear, scale), optionally an elastic deformation, sampled directly on the output crop's grid
   at a random position (the random crop), then a flip along each axis with probability ``flip_prob``. The
   sequence is simulated afterwards, on the crop only.
2. **Target**: the clean simulated (or real) crop, z-scored over the crop. The reconstruction branch predicts
   it from the corrupted view.
3. **Corruption** (MONAI's transforms, each with its own probability): ``RandBiasField``, ``RandGibbsNoise``,
   ``RandRicianNoise`` (relative to the image's standard deviation), ``RandCoarseDropout`` (holes filled with
   0, the background of a magnitude image).
4. **Normalisation**: the corrupted crop is z-scored (mean 0, standard deviation 1 over the crop).

Degrees, not radians: the reference implementation passed ``rotate_range=15`` to MONAI, which reads radians, so
its views were rotated by up to 15 rad (860 degrees: any orientation). Here the range is given in degrees
(``rotate_range_deg``) and converted with ``math.radians`` before it reaches MONAI.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Rand3DElastic,
    RandAffine,
    RandBiasField,
    RandCoarseDropout,
    RandFlip,
    RandGibbsNoise,
    Randomizable,
    RandRicianNoise,
)

from mri_ssl.errors import InputError
from mri_ssl.physics.contrast import check_min_tissue_contrast, draw_with_tissue_contrast
from mri_ssl.physics.protocols import SEQUENCES, check_sequence, protocol_item, sample_protocol
from mri_ssl.physics.simulate import DEFAULT_MAP_NAMES, check_map_names, check_maps, simulate

__all__ = ["ContrastiveViewPair", "PAPER_CROP_VOXELS", "VIEW_MODES", "crop_scale", "scaled_interval"]

VIEW_MODES = ("base", "seqaug", "seqinv")

# The sequence and protocol recorded for views of real images, which carry no simulated acquisition.
REAL_IMAGE_SEQUENCE = "image"

# Below this fraction of the crop's largest magnitude a standard deviation is float32 round-off, not contrast.
_ZSCORE_RELATIVE_FLOOR = 1e-6
_ZSCORE_ABSOLUTE_FLOOR = 1e-12

# The paper's crop edge in voxels: the voxel-unit augmentation sizes are the paper's at this crop.
PAPER_CROP_VOXELS = 96

# A draw identical to the other view's is redrawn; with continuous distributions one redraw is already rare.
_MAX_REDRAWS = 100


def zscore(image: torch.Tensor) -> torch.Tensor:
    """``(image - mean) / std`` over all of ``image``; a constant image becomes all zeros instead of NaN."""
    std, mean = torch.std_mean(image, correction=0)
    floor = _ZSCORE_RELATIVE_FLOOR * image.abs().amax() + _ZSCORE_ABSOLUTE_FLOOR
    # torch.where instead of an if: no device-to-host synchronisation on a GPU.
    return torch.where(std > floor, (image - mean) / std.clamp_min(floor), torch.zeros_like(image))


def _plain(image: torch.Tensor) -> torch.Tensor:
    """A plain float32 ``torch.Tensor`` (MONAI's transforms return ``MetaTensor``s that carry their history)."""
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    return torch.as_tensor(image).float()


def _check_probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(name, f"a probability must be in [0, 1], got {value}")
    return value


def _check_range(name: str, value: float, low: float = 0.0, high: float | None = None, unit: str = "") -> float:
    value = float(value)
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise InputError(name, f"must be a finite number {bound}{unit}, got {value}")
    return value


def _check_int_interval(name: str, interval: Sequence[int], minimum: int) -> tuple[int, int]:
    values = tuple(interval) if isinstance(interval, (tuple, list)) else ()
    if (len(values) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
            or values[0] < minimum or values[1] < values[0]):
        raise InputError(name, f"expected (low, high) integers with {minimum} <= low <= high, got {interval!r}")
    return int(values[0]), int(values[1])


def crop_scale(crop_size: Sequence[int], reference: int | None) -> tuple[float, float, float]:
    """``crop_size / reference`` per axis (1 when ``reference`` is None): how voxel-unit sizes follow the crop."""
    if reference is None:
        return (1.0, 1.0, 1.0)
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) or reference < 1:
        raise InputError("size_reference_crop", f"expected a positive integer (voxels) or None, got {reference!r}")
    return tuple(c / float(reference) for c in crop_size)


def scaled_interval(interval: tuple[int, int], scale: Sequence[float]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(low, high)`` voxels scaled per axis: ``((low_x, low_y, low_z), (high_x, high_y, high_z))``, each >= 1."""
    low = tuple(max(1, round(interval[0] * s)) for s in scale)
    high = tuple(max(lo, round(interval[1] * s)) for lo, s in zip(low, scale))
    return low, high


def _check_crop_size(crop_size: Sequence[int] | int) -> tuple[int, int, int]:
    size = (crop_size,) * 3 if isinstance(crop_size, (int, np.integer)) else tuple(crop_size)
    if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise InputError("crop_size", f"expected 3 positive integers (voxels along x, y, z), got {crop_size!r}")
    return tuple(int(s) for s in size)


class ContrastiveViewPair(Randomizable):
    """Make two augmented views (and their clean reconstruction targets) of every item of a batch.

    Args:
        mode: ``"base"``, ``"seqaug"`` or ``"seqinv"`` (see the module docstring).
        crop_size: the views' spatial size in voxels, one int or three. A volume smaller than the crop along an
            axis is centred in it and zero-padded (no error); a larger one is cropped at a uniformly random
            position.
        map_names: the qMRI map in each input channel (``pd``, ``r1`` and ``r2s`` in 1/s required; ``mt`` as a
            fraction, ``r2`` in 1/s and ``b1`` optional). Ignored for image input.
        input_is_image: the input is real images ``(B, 1, X, Y, Z)`` instead of maps; only with mode ``"base"``.
        sequences: the sequences ``seqaug`` and ``seqinv`` draw from, uniformly.
        rotate_range_deg: the largest rotation about each axis, in DEGREES (converted to radians for MONAI).
        shear_range: the largest shear coefficient (dimensionless, the off-diagonal of the shear matrix).
        scale_range: the largest relative zoom, e.g. 0.1 for factors in [0.9, 1.1].
        elastic: add MONAI's ``Rand3DElastic`` deformation (slower; off by default).
        elastic_sigma_range: smoothing of the random displacement field, in voxels.
        elastic_magnitude_range: multiplier of the smoothed field (MONAI's units; with the default ranges the
            displacement is 0.3 to 2 voxels root-mean-square, at most about 5).
        flip_prob: the probability of a flip along each of the three axes, independently.
        bias_field_prob, bias_field_coeff: probability of a multiplicative bias field ``exp(p(x, y, z))`` with
            ``p`` a degree-3 Legendre polynomial whose coefficients are uniform in ``[-coeff, coeff]``.
        gibbs_prob, gibbs_alpha: probability of Gibbs ringing and the largest k-space truncation fraction (MONAI's
            ``alpha``, drawn uniformly from ``[0, gibbs_alpha]``).
        rician_prob, rician_std: probability of Rician noise and its largest standard deviation relative to the
            clean crop's standard deviation (drawn uniformly from ``[0, rician_std]``). Relative because simulated
            signal scales differ by orders of magnitude between protocols, and because the downstream denoising
            task adds noise of 0.2 to images of unit standard deviation: the two definitions agree.
        dropout_prob, dropout_holes, dropout_size: probability of cuboid dropout, the (min, max) number of holes
            and the (min, max) edge length of a hole in voxels of a ``size_reference_crop`` crop (per axis, drawn
            independently; clipped to the crop).
        size_reference_crop: the crop edge, in voxels, at which the voxel-unit sizes (``dropout_size``,
            ``elastic_sigma_range`` and the displacement that ``elastic_magnitude_range`` makes) are given; they are
            scaled by ``crop_size / size_reference_crop`` along each axis (the elastic ones by the geometric mean),
            so every augmentation covers the same share of the crop at any crop size. The default, 96, is the
            paper's crop, where the sizes are the paper's. None: the sizes are absolute voxels (a 5-24 voxel hole
            at a 32^3 crop erases about ten times the share it erases at 96^3).
        min_tissue_contrast: reject protocol draws whose tissue contrast (``mri_ssl.physics.contrast``: the
            smallest pairwise gap among the CSF, GM and WM signals of typical 3 T tissue values, relative to the
            brightest; in [0, 1/2)) is below this floor and draw the protocol again (the sequence stays drawn, so
            the sequences keep their shares). 0 (default): the paper's distributions, every draw kept, and exactly
            the random draws of a view pair without the floor. A departure from the paper: about a fifth of its
            FSE, GRE and FLAIR draws show two of the three tissues within 5 % of each other (MPRAGE about 4 %), and a
            pair with such a view asks the encoder to match anatomy that the view does not show. Applies to every
            mode (Base's MPRAGE draws too); ignored for real images. At the CPU demo's budget a floor of 0.1 did
            not make SeqInv beat Base on the probe (mri_ssl_pretrain's README), so no shipped config sets it.
        shared_view_geometry: both views of an item take the same spatial draw (crop position, rotation, shear,
            scale, elastic deformation, flips), so they differ only in acquisition (``seqinv``) and in the
            intensity corruptions, as the pairs of the representation probe do. False (default, the paper's): each
            view is cropped, rotated and flipped independently. Measured at the CPU demo's budget (three seeds), it
            did not separate SeqInv from Base either.
        fused: simulate with the compiled kernel (``mri_ssl.physics.fused``).
        validate: check the input maps' names, ranges and finiteness once per call (the crops are then
            simulated without re-checking: bilinear resampling and zero padding keep every map in range).

    Defaults for the probabilities: the paper applies every corruption as an augmentation but gives no
    probabilities. Noise and dropout (0.8) make the reconstruction branch a denoising / inpainting task on most
    views, while bias field and Gibbs ringing (0.5) leave half the views free of them, so the encoder also sees
    clean-looking contrast.

    Call with ``maps`` of shape ``(B, C, X, Y, Z)`` (any device, any float dtype). Returns a dict:
    ``view1``, ``view2``, ``target1``, ``target2``: ``(B, 1, *crop_size)`` float32 on the input's device;
    ``sequence1``, ``sequence2``: lists of B sequence names (``"image"`` for real images); ``protocol1``,
    ``protocol2``: lists of B dicts of floats (seconds, radians; empty for real images).

    Device: the affine/elastic resampling, simulation, Gibbs ringing and z-scoring run on the input's device.
    ``RandRicianNoise`` draws its noise with numpy and copies it to the device; ``RandBiasField`` and
    ``RandCoarseDropout`` round-trip the crop through a numpy array (MONAI implements them in numpy). The
    results are correct on any device; on a GPU these three cost a host copy of each crop.

    ``set_random_state(seed)`` makes the whole pair generation (acquisitions, spatial and intensity draws)
    reproducible: every MONAI transform inside shares this object's ``self.R``.
    """

    def __init__(
        self,
        mode: str = "seqinv",
        crop_size: Sequence[int] | int = (96, 96, 96),
        map_names: Sequence[str] = DEFAULT_MAP_NAMES,
        input_is_image: bool = False,
        sequences: Sequence[str] = SEQUENCES,
        rotate_range_deg: float = 15.0,
        shear_range: float = 0.1,
        scale_range: float = 0.1,
        elastic: bool = False,
        elastic_sigma_range: tuple[float, float] = (5.0, 8.0),
        elastic_magnitude_range: tuple[float, float] = (50.0, 150.0),
        flip_prob: float = 0.5,
        bias_field_prob: float = 0.5,
        bias_field_coeff: float = 0.3,
        gibbs_prob: float = 0.5,
        gibbs_alpha: float = 0.8,
        rician_prob: float = 0.8,
        rician_std: float = 0.2,
        dropout_prob: float = 0.8,
        dropout_holes: tuple[int, int] = (1, 10),
        dropout_size: tuple[int, int] = (5, 24),
        size_reference_crop: int | None = PAPER_CROP_VOXELS,
        min_tissue_contrast: float = 0.0,
        shared_view_geometry: bool = False,
        fused: bool = False,
        validate: bool = True,
    ) -> None:
        if mode not in VIEW_MODES:
            raise InputError("mode", f"unknown view mode {mode!r}; expected one of {', '.join(VIEW_MODES)}")
        if input_is_image and mode != "base":
            raise InputError("input_is_image", f"real images have one contrast, so only mode 'base' can use them; "
                                               f"mode {mode!r} simulates sequences from qMRI maps")
        self.mode = mode
        self.input_is_image = bool(input_is_image)
        self.crop_size = _check_crop_size(crop_size)
        names = (map_names,) if isinstance(map_names, str) else tuple(map_names)
        # Real images are one channel of whatever name; maps must say which channel is which.
        self.map_names = names if self.input_is_image else check_map_names(names)
        names = (sequences,) if isinstance(sequences, str) else tuple(sequences)
        if not names:
            raise InputError("sequences", "at least one sequence is needed")
        try:
            self.sequences = tuple(check_sequence(s) for s in names)
        except InputError as error:
            raise InputError("sequences", error.problem) from error
        self.rotate_range_deg = _check_range("rotate_range_deg", rotate_range_deg, 0.0, 180.0, " degrees")
        shear_range = _check_range("shear_range", shear_range, 0.0, 1.0)
        scale_range = _check_range("scale_range", scale_range, 0.0, 0.9)
        sigma_low, sigma_high = (_check_range("elastic_sigma_range", v) for v in elastic_sigma_range)
        magnitude_low, magnitude_high = (_check_range("elastic_magnitude_range", v) for v in elastic_magnitude_range)
        if sigma_high < sigma_low or magnitude_high < magnitude_low or sigma_low <= 0:
            raise InputError("elastic_sigma_range" if sigma_high < sigma_low or sigma_low <= 0
                             else "elastic_magnitude_range", "expected (low, high) with 0 < low <= high")
        bias_field_coeff = _check_range("bias_field_coeff", bias_field_coeff)
        gibbs_alpha = _check_range("gibbs_alpha", gibbs_alpha, 0.0, 1.0)
        rician_std = _check_range("rician_std", rician_std)
        holes = _check_int_interval("dropout_holes", dropout_holes, 1)
        hole_size = _check_int_interval("dropout_size", dropout_size, 1)
        self.min_tissue_contrast = check_min_tissue_contrast(min_tissue_contrast)
        self.shared_view_geometry = bool(shared_view_geometry)
        self.fused = bool(fused)
        self.validate = bool(validate)
        self.elastic = bool(elastic)
        scale = crop_scale(self.crop_size, size_reference_crop)
        hole_size = scaled_interval(hole_size, scale)
        mean_scale = float(np.prod(scale)) ** (1.0 / 3.0)
        # The smoothed random field's std falls as sigma^-1.5 in 3-D: scaling sigma by s and the magnitude by
        # s^2.5 scales the displacement, in voxels, by s.
        sigma_low, sigma_high = sigma_low * mean_scale, sigma_high * mean_scale
        magnitude_low, magnitude_high = magnitude_low * mean_scale ** 2.5, magnitude_high * mean_scale ** 2.5

        rotate_range_rad = math.radians(self.rotate_range_deg)  # MONAI reads radians: the reference's bug
        affine_ranges = dict(
            rotate_range=(rotate_range_rad,) * 3, shear_range=(shear_range,) * 6, scale_range=(scale_range,) * 3
        )
        # One resampling does the affine, the (optional) elastic deformation and the crop: the output grid is the
        # crop, and a random translation (set per call from the volume's size) places it in the volume.
        if self.elastic:
            self.spatial = Rand3DElastic(
                sigma_range=(sigma_low, sigma_high), magnitude_range=(magnitude_low, magnitude_high), prob=1.0,
                spatial_size=self.crop_size, mode="bilinear", padding_mode="zeros", **affine_ranges,
            )
        else:
            self.spatial = RandAffine(
                prob=1.0, spatial_size=self.crop_size, mode="bilinear", padding_mode="zeros", **affine_ranges
            )
        # MONAI resamples in float64 by default: 1.5-2.3x slower on CPU (benchmarks/pretrain_pipeline.py) and far
        # slower on consumer GPUs, for differences of ~1e-5 on unit-range maps.
        self.spatial.resampler.dtype = torch.float32
        self.flips = [RandFlip(prob=_check_probability("flip_prob", flip_prob), spatial_axis=a) for a in range(3)]
        self.bias_field = RandBiasField(
            degree=3, coeff_range=(-bias_field_coeff, bias_field_coeff),
            prob=_check_probability("bias_field_prob", bias_field_prob),
        )
        self.gibbs = RandGibbsNoise(prob=_check_probability("gibbs_prob", gibbs_prob), alpha=(0.0, gibbs_alpha))
        self.rician = RandRicianNoise(
            prob=_check_probability("rician_prob", rician_prob), mean=0.0, std=rician_std, relative=True,
            channel_wise=False, sample_std=True,
        )
        self.dropout = RandCoarseDropout(
            holes=holes[0], max_holes=holes[1], spatial_size=hole_size[0], max_spatial_size=hole_size[1],
            fill_value=0.0, prob=_check_probability("dropout_prob", dropout_prob),
        )
        self._share_random_state()
        self.acquisitions: list[tuple[tuple[str, dict], tuple[str, dict]]] = []

    # ------------------------------------------------------------------------------------------------------------
    # Randomness

    def _random_transforms(self) -> list[Randomizable]:
        return [self.spatial, *self.flips, self.bias_field, self.gibbs, self.rician, self.dropout]

    def _share_random_state(self) -> None:
        for transform in self._random_transforms():
            transform.set_random_state(state=self.R)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self._share_random_state()
        return self

    def _draw_acquisition(self, sequences: Sequence[str]) -> tuple[str, dict[str, float]]:
        sequence = str(self.R.choice(list(sequences)))

        def draw() -> tuple[str, dict[str, float]]:
            # sample_protocol draws from a torch.Generator; seed it from self.R so set_random_state governs it.
            generator = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))
            return sequence, protocol_item(sample_protocol(sequence, 1, generator), 0)

        return draw_with_tissue_contrast(draw, self.min_tissue_contrast, self.map_names, f"{sequence} protocols")

    def _draw_pair(self) -> tuple[tuple[str, dict], tuple[str, dict]]:
        if self.input_is_image:
            return (REAL_IMAGE_SEQUENCE, {}), (REAL_IMAGE_SEQUENCE, {})
        if self.mode == "base":
            acquisition = self._draw_acquisition(("mprage",))
            return acquisition, acquisition
        first = self._draw_acquisition(self.sequences)
        if self.mode == "seqaug":
            return first, first
        for _ in range(_MAX_REDRAWS):
            second = self._draw_acquisition(self.sequences)
            if second != first:
                return first, second
        raise RuntimeError(f"seqinv: {_MAX_REDRAWS} draws all repeated {first}; are the protocols random?")

    def randomize(self, data: int | None = None) -> None:
        """Draw the two acquisitions (sequence, protocol) of each of ``data`` (the batch size) items."""
        self.acquisitions = [self._draw_pair() for _ in range(int(data or 1))]

    # ------------------------------------------------------------------------------------------------------------
    # The steps of one view

    def _set_device(self, device: torch.device) -> None:
        # MONAI fixes a spatial transform's device at construction; the batch's device is known only now.
        if self.elastic:
            self.spatial.set_device(device)
        else:
            self.spatial.rand_affine_grid.device = device
            self.spatial.resampler.device = device

    def _set_crop_position_range(self, volume_shape: Sequence[int]) -> None:
        """Let the crop's centre move uniformly over every position that keeps the unrotated crop inside."""
        half_slack = tuple(max(0.0, (v - c) / 2.0) for v, c in zip(volume_shape, self.crop_size))
        self.spatial.rand_affine_grid.translate_range = half_slack

    def _spatial(self, volume: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """Affine (+ elastic) resampling onto a random crop, then random flips: ``(C, X, Y, Z) -> (C, *crop)``;
        ``randomize=False`` repeats the previous call's draw (``shared_view_geometry``).

        Done on the maps, before simulation: the signal equations act voxel by voxel, so resampling the maps and
        then simulating equals simulating and then resampling wherever the interpolation stencil sees one tissue.
        Only voxels interpolated across a tissue border differ: they get the signal of the averaged tissue
        parameters instead of the average of the tissues' signals (a partial-volume effect). Simulating on the
        crop (96^3) instead of the whole head is several times cheaper. The rotation is about the crop's centre.
        """
        crop = self.spatial(volume, randomize=randomize)
        for flip in self.flips:
            crop = flip(crop, randomize=randomize)
        return _plain(crop)

    def _simulate(self, maps_crop: torch.Tensor, sequence: str, protocol: dict) -> torch.Tensor:
        """``(C, *crop)`` maps -> ``(1, *crop)`` magnitude image (a real image passes through)."""
        if self.input_is_image:
            return maps_crop
        named = {name: maps_crop[i] for i, name in enumerate(self.map_names)}
        return simulate(named, sequence, protocol, fused=self.fused, validate=False).unsqueeze(0)

    def _corrupt(self, clean: torch.Tensor) -> torch.Tensor:
        """Bias field, Gibbs ringing, Rician noise, cuboid dropout, each with its probability: ``(1, *crop)``.

        Physical order: the receive field multiplies the object, k-space truncation acts on the acquired signal,
        noise adds to the complex data before the magnitude is taken, dropout is an artificial occlusion. The
        input must be a non-negative magnitude image (Rician noise is defined for one).
        """
        image = clean
        for transform in (self.bias_field, self.gibbs, self.rician, self.dropout):
            image = transform(image)
        return _plain(image).to(clean.device)

    def _view(self, volume: torch.Tensor, sequence: str, protocol: dict,
              new_geometry: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """One view of one item: ``(C, X, Y, Z)`` -> (view, target), each ``(1, *crop)``; ``new_geometry=False``
        reuses the previous view's spatial draw."""
        clean = self._simulate(self._spatial(volume, randomize=new_geometry), sequence, protocol)
        if self.input_is_image:
            # Rician noise needs a magnitude image; a real image that was already normalised is shifted to >= 0.
            clean = clean - clean.amin().clamp_max(0.0)
        return zscore(self._corrupt(clean)), zscore(clean)

    # ------------------------------------------------------------------------------------------------------------

    def _check_input(self, maps: torch.Tensor) -> torch.Tensor:
        if isinstance(maps, MetaTensor):
            maps = maps.as_tensor()
        maps = torch.as_tensor(maps)
        channels = 1 if self.input_is_image else len(self.map_names)
        what = "images (B, 1, X, Y, Z)" if self.input_is_image else f"maps (B, {channels}, X, Y, Z) {self.map_names}"
        if maps.ndim != 5 or maps.shape[1] != channels or maps.shape[0] < 1 or min(maps.shape[2:]) < 1:
            raise InputError("maps", f"expected {what}, got shape {tuple(maps.shape)}")
        maps = maps.float()
        if self.validate and not self.input_is_image:
            check_maps({name: maps[:, i] for i, name in enumerate(self.map_names)}, spatial_dims=None)
        elif self.validate and not bool(torch.isfinite(maps).all()):
            raise InputError("maps", "image has non-finite voxels (NaN or Inf)")
        return maps

    def __call__(self, maps: torch.Tensor, randomize: bool = True) -> dict:
        """Two views per item of ``maps`` ``(B, C, X, Y, Z)``; see the class docstring for the returned dict."""
        maps = self._check_input(maps)
        if randomize or len(self.acquisitions) != maps.shape[0]:
            self.randomize(maps.shape[0])
        self._set_device(maps.device)
        self._set_crop_position_range(maps.shape[2:])
        keys = ("view1", "view2", "target1", "target2", "sequence1", "sequence2", "protocol1", "protocol2")
        out: dict[str, list] = {key: [] for key in keys}
        for volume, acquisitions in zip(maps, self.acquisitions):
            for index, (sequence, protocol) in enumerate(acquisitions, start=1):
                new_geometry = index == 1 or not self.shared_view_geometry
                view, target = self._view(volume, sequence, protocol, new_geometry)
                out[f"view{index}"].append(view)
                out[f"target{index}"].append(target)
                out[f"sequence{index}"].append(sequence)
                out[f"protocol{index}"].append(dict(protocol))
        for key in ("view1", "view2", "target1", "target2"):
            out[key] = torch.stack(out[key]).to(device=maps.device, dtype=torch.float32)
        return out
