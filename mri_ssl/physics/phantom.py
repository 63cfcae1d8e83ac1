"""A quantitative-MRI phantom of a head built from real anatomy: the MNI152 2009 templates that nilearn ships.

Anatomy
    The ICBM 2009a nonlinear symmetric templates (Fonov et al., NeuroImage 2011;54:313-327) come inside nilearn's
    wheel, so nothing is downloaded: the T1 image, grey- and white-matter probability maps and the brain mask
    (T1 > 0.2), each ``(197, 233, 189)`` voxels of 1 mm. Five tissue classes, ``TISSUE_CLASSES``, get a probability
    per voxel that sums to 1 (partial volume):

    - ``gm``, ``wm``: the template probabilities, inside the intracranial volume;
    - ``csf``: whatever the intracranial volume leaves after GM + WM, so ventricles, sulci and a thin subarachnoid
      layer around the brain become CSF;
    - ``non_brain``: the scalp (a fat/muscle mix, bright on T1-weighted images);
    - ``background``: everything without MR signal, air and cortical bone (skull).

    nilearn's T1 template is skull-stripped (no scalp or skull survives outside its brain mask, only a faint
    partial-volume fringe), so the extra-cerebral layers cannot be read from its intensities. They are built as
    shells at a distance from a smoothed brain mask, with typical adult thicknesses: subarachnoid CSF out to
    ``CSF_LAYER_MM``, skull (background, no signal) out to ``SKULL_OUTER_MM``, scalp (non-brain) out to
    ``SCALP_OUTER_MM``, then air. Only the brain mask and the GM/WM templates shape the phantom; the T1 template's
    intensities never do (apart from the brain mask nilearn defines from it), so ``mprage_fidelity`` is an honest
    test of the phantom against real data.

Tissue parameters at 3 T (nominal values, ``tissue_parameters()``)
    ==========  =====  =========  =========  ==========  ======
    class       PD     R1 (1/s)   R2 (1/s)   R2* (1/s)   MT
    ==========  =====  =========  =========  ==========  ======
    background  0      1.0        10.0       20.0        0
    csf         1.00   0.23       0.55       1.0         0
    gm          0.80   0.68       10.0       15.5        0.009
    wm          0.69   1.15       13.5       20.5        0.018
    non_brain   0.90   2.5        9.0        25.0        0.005
    ==========  =====  =========  =========  ==========  ======

    PD is a fraction of pure water; MT is the magnetisation-transfer saturation as a fraction (MPM's percent units
    / 100). Sources: GM and WM R1, PD, MT and R2* from multi-parameter mapping at 3 T (Weiskopf et al., Front
    Neurosci 2013;7:95), with R1 and R2 between the 3 T relaxometry of Wansapura et al. (JMRI 1999;9:531-538: T1
    WM 0.83 s, GM 1.33 s; T2 WM 80 ms, GM 110 ms) and Stanisz et al. (MRM 2005;54:507-512: T1 WM 1.08 s, GM
    1.82 s; T2 WM 69 ms, GM 99 ms). CSF T1 = 4.3 s from Lu et al. (JMRI 2005;22:13-22); CSF T2 (about 1.8 s) and
    R2* are of the order reported at 3 T, and free water has no macromolecular pool, so no MT. The scalp mixes
    subcutaneous fat (T1 about 0.37 s, T2 about 0.13 s at 3 T) with some muscle (T1 about 1.4 s, T2 about 30 ms)
    after Gold et al. (AJR 2004;183:343-351); its R2* is high because fat's multi-peak spectrum dephases within
    milliseconds (Hamilton et al., NMR Biomed 2011;24:784-790). Background has no water (PD 0); its rates are
    finite placeholders of tissue magnitude so that every map is valid everywhere and never read as signal.

Partial-volume mixing
    ``PD = sum_k p_k PD_k``; every rate (and MT) is the water-weighted mean ``R = sum_k p_k PD_k R_k / sum_k p_k
    PD_k``, the fast-exchange limit in which one voxel relaxes with the average rate of its water. The voxel's
    relaxation is dominated by the compartments that hold its water, and air, which holds none, must not dilute
    the rates of a half-air voxel at the scalp surface. Air gets a tiny weight so a voxel of pure air takes the
    background's nominal rates instead of 0/0.

Per-subject variation (``generator`` given)
    Each tissue value is multiplied by a log-normal factor (``TISSUE_LOG_STD``, 4-8 %: two standard deviations span
    the between-study range of the relaxometry above) and each map by a
    smooth multiplicative field: a coarse grid of log-normal values, one control point every
    ``FIELD_CONTROL_SPACING_MM``, upsampled trilinearly (``FIELD_LOG_STD``, a few percent). PD is capped at 1
    (pure water). Without a generator the phantom is the deterministic nominal one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage, stats

from mri_ssl.errors import InputError
from mri_ssl.physics.protocols import TYPICAL_PROTOCOLS
from mri_ssl.physics.simulate import simulate

TISSUE_CLASSES = ("background", "csf", "gm", "wm", "non_brain")
TISSUE_QUANTITIES = ("pd", "r1", "r2", "r2s", "mt")

# Nominal 3 T values; see the module docstring for the sources. PD in [0, 1], rates in 1/s, MT a fraction.
NOMINAL_TISSUE_PARAMETERS = {
    "background": {"pd": 0.0, "r1": 1.0, "r2": 10.0, "r2s": 20.0, "mt": 0.0},
    "csf": {"pd": 1.0, "r1": 0.23, "r2": 0.55, "r2s": 1.0, "mt": 0.0},
    "gm": {"pd": 0.80, "r1": 0.68, "r2": 10.0, "r2s": 15.5, "mt": 0.009},
    "wm": {"pd": 0.69, "r1": 1.15, "r2": 13.5, "r2s": 20.5, "mt": 0.018},
    "non_brain": {"pd": 0.90, "r1": 2.5, "r2": 9.0, "r2s": 25.0, "mt": 0.005},
}

# Standard deviation of the natural log of the per-subject factor on each tissue value (0.08 is about 8 %). Two
# standard deviations span the between-study range of the 3 T relaxometry cited above: T1 of WM 0.83-1.08 s and of
# GM 1.33-1.82 s (Wansapura 1999 vs Stanisz 2005: +-13-16 % about their mean), T2 of WM 69-80 ms and of GM
# 99-110 ms (+-5-7 %). PD, R2* and MT get comparable few-percent spreads.
TISSUE_LOG_STD = {"pd": 0.04, "r1": 0.08, "r2": 0.05, "r2s": 0.06, "mt": 0.08}
# Standard deviation of the natural log of the smooth spatial field on each map.
FIELD_LOG_STD = {"pd": 0.02, "r1": 0.03, "r2": 0.03, "r2s": 0.04, "mt": 0.04}
# Control-point spacing of the spatial field: 50 mm gives a handful of points per axis, a slowly varying field.
FIELD_CONTROL_SPACING_MM = 50.0

# Outer radii of the extra-cerebral shells, in mm from the (smoothed) brain mask: typical adult subarachnoid CSF
# (a few mm), skull (about 6 mm) and scalp (about 6 mm). All fit in the template's field of view (>= 25 mm margin).
CSF_LAYER_MM = 3.0
SKULL_OUTER_MM = 9.0
SCALP_OUTER_MM = 15.0
# Smoothing of the brain mask before measuring distances, so the skull follows the brain's envelope, not its gyri.
ENVELOPE_SMOOTHING_MM = 2.0

# nilearn's brain mask is the rescaled T1 template above this value; resampled masks use the same rule.
BRAIN_MASK_THRESHOLD = 0.2
# Water weight of air in the rate mixing: small enough to never matter next to tissue, non-zero to avoid 0/0.
AIR_WATER_WEIGHT = 1e-6
# Finer grids only interpolate the 1 mm templates, and 0.25 mm already needs 64 times the 1 mm memory.
FINEST_RESOLUTION_MM = 0.25


@dataclass
class Phantom:
    """A qMRI head phantom on one voxel grid.

    Attributes:
        maps: ``"pd"`` (fraction of pure water), ``"r1"``, ``"r2"``, ``"r2s"`` (1/s) and ``"mt"`` (fraction),
            float32 tensors of shape ``(X, Y, Z)``; pass them to ``mri_ssl.physics.simulate``.
        labels: int64 ``(X, Y, Z)``, the most probable tissue class per voxel, an index into ``TISSUE_CLASSES``.
        affine: ``(4, 4)`` float64 voxel-to-world (MNI mm) matrix.
        reference_t1: the real MNI152 T1 template on the same grid, float32 ``(X, Y, Z)`` in [0, 1].
        brain_mask: bool ``(X, Y, Z)``, nilearn's brain mask (T1 template > 0.2) on the same grid.
    """

    maps: dict[str, torch.Tensor]
    labels: torch.Tensor
    affine: np.ndarray
    reference_t1: torch.Tensor
    brain_mask: torch.Tensor


def tissue_parameters(generator: torch.Generator | None = None) -> dict[str, dict[str, float]]:
    """The PD, R1, R2, R2* and MT of every tissue class at 3 T.

    Args:
        generator: None for the nominal published values; a CPU ``torch.Generator`` for one subject's values, each
            nominal value times ``exp(N(0, TISSUE_LOG_STD[quantity]))``, with PD capped at 1 (pure water). Rates
            stay positive and MT stays in [0, 1) because the factors are positive and a few percent.

    Returns:
        ``{class: {"pd": fraction, "r1": 1/s, "r2": 1/s, "r2s": 1/s, "mt": fraction}}`` for every class of
        ``TISSUE_CLASSES``.
    """
    if generator is None:
        return {tissue: dict(values) for tissue, values in NOMINAL_TISSUE_PARAMETERS.items()}
    # One draw per (class, quantity), always in the same order, so a seed fixes every value.
    log_factors = torch.randn(
        len(TISSUE_CLASSES), len(TISSUE_QUANTITIES), generator=generator, dtype=torch.float64
    )
    parameters = {}
    for i, tissue in enumerate(TISSUE_CLASSES):
        values = {}
        for j, quantity in enumerate(TISSUE_QUANTITIES):
            factor = math.exp(TISSUE_LOG_STD[quantity] * float(log_factors[i, j]))
            values[quantity] = NOMINAL_TISSUE_PARAMETERS[tissue][quantity] * factor
        values["pd"] = min(values["pd"], 1.0)
        values["mt"] = min(values["mt"], 0.5)  # a guard only: a 5 % factor cannot take MT near 1
        parameters[tissue] = values
    return parameters


# ----------------------------------------------------------------------------------------------------------------
# Templates and tissue probabilities.


def _templates_1mm() -> dict[str, np.ndarray]:
    """The MNI152 templates at 1 mm: ``t1``, ``gm``, ``wm`` float32 in [0, 1], ``brain_mask`` bool, ``affine``.

    Not cached itself: ``_anatomy`` caches what is derived from it, so the raw GM and WM maps are not kept twice.
    """
    # Imported here: nilearn's datasets module is slow to import and only the phantom needs it.
    from nilearn import datasets

    t1_image = datasets.load_mni152_template(resolution=1)
    templates = {
        "t1": t1_image.get_fdata(dtype=np.float32),
        "gm": datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32),
        "wm": datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32),
        "brain_mask": datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5,
        "affine": np.asarray(t1_image.affine, dtype=np.float64),
    }
    return templates


def _fraction_within(distance_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """Fraction of a 1 mm voxel at ``distance_mm`` from a surface that lies within ``radius_mm`` of it."""
    # A linear ramp one voxel wide: the partial volume of a voxel that a smooth surface cuts.
    return np.clip(radius_mm - distance_mm + 0.5, 0.0, 1.0, dtype=np.float32)


def _tissue_probabilities_1mm(templates: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities of ``TISSUE_CLASSES`` at 1 mm, float32 ``(5, 197, 233, 189)``, summing to 1 per voxel."""
    brain_mask = templates["brain_mask"]
    envelope = ndimage.gaussian_filter(brain_mask.astype(np.float32), ENVELOPE_SMOOTHING_MM) > 0.5
    envelope |= brain_mask
    distance_mm = ndimage.distance_transform_edt(~envelope).astype(np.float32)  # 1 mm voxels: indices are mm

    intracranial = _fraction_within(distance_mm, CSF_LAYER_MM)
    within_skull = _fraction_within(distance_mm, SKULL_OUTER_MM)
    within_scalp = _fraction_within(distance_mm, SCALP_OUTER_MM)
    del distance_mm

    gm = np.clip(templates["gm"], 0.0, 1.0)
    wm = np.clip(templates["wm"], 0.0, 1.0)
    # The two templates overlap by rounding (their sum reaches 1 + 3e-8); rescale so CSF is never negative.
    scale = 1.0 / np.maximum(gm + wm, 1.0)
    gm *= scale
    wm *= scale
    # GM and WM are fractions of the intracranial volume; CSF is what they leave, ventricles and sulci included.
    csf = intracranial * (1.0 - gm - wm)
    gm *= intracranial
    wm *= intracranial
    non_brain = within_scalp - within_skull
    background = (within_skull - intracranial) + (1.0 - within_scalp)  # skull and air: no MR signal
    return np.stack([background, csf, gm, wm, non_brain])


def _grid_shape(shape_1mm: tuple[int, ...], resolution_mm: float) -> tuple[int, ...]:
    """Voxels per axis of a grid of ``resolution_mm`` that starts at the 1 mm grid's first voxel and stays in it."""
    # The small tolerance keeps e.g. 196 / 2 = 98 steps from rounding down to 97.
    return tuple(int(math.floor((n - 1) / resolution_mm + 1e-6)) + 1 for n in shape_1mm)


def _resample_linear(volume: np.ndarray, resolution_mm: float) -> np.ndarray:
    """Sample a 1 mm volume at ``resolution_mm`` spacing from its first voxel, float32.

    Coarser grids are low-pass filtered first, with the Gaussian that widens a 1 mm box to a ``resolution_mm`` box
    (variance ``(r^2 - 1) / 12`` mm^2), so each coarse voxel averages the anatomy it covers instead of aliasing it.
    Then separable linear interpolation, which keeps probabilities in [0, 1] and summing to 1.
    """
    volume = volume.astype(np.float32, copy=True)
    if resolution_mm > 1.0:
        sigma_mm = math.sqrt((resolution_mm**2 - 1.0) / 12.0)
        volume = ndimage.gaussian_filter(volume, sigma_mm, mode="nearest")
    for axis, n_out in enumerate(_grid_shape(volume.shape, resolution_mm)):
        n_in = volume.shape[axis]
        position = np.arange(n_out, dtype=np.float64) * resolution_mm
        lower = np.clip(np.floor(position).astype(np.int64), 0, max(n_in - 2, 0))
        upper = np.minimum(lower + 1, n_in - 1)
        weight_shape = [1] * volume.ndim
        weight_shape[axis] = n_out
        upper_weight = np.clip(position - lower, 0.0, 1.0).astype(np.float32).reshape(weight_shape)
        volume = np.take(volume, lower, axis=axis) * (1.0 - upper_weight) + np.take(volume, upper, axis=axis) * (
            upper_weight
        )
    return volume


def _most_probable_class(probabilities: torch.Tensor) -> torch.Tensor:
    """``argmax`` over the class axis of ``(C, X, Y, Z)`` as uint8 ``(X, Y, Z)``; ties go to the lower class."""
    # A running comparison over five contiguous volumes is several times faster than torch.argmax over the
    # strided leading axis of a 1 mm volume.
    best = probabilities[0].clone()
    labels = torch.zeros(probabilities.shape[1:], dtype=torch.uint8)
    for index in range(1, probabilities.shape[0]):
        better = probabilities[index] > best
        labels[better] = index
        best = torch.where(better, probabilities[index], best)
    return labels


@functools.lru_cache(maxsize=3)
def _anatomy(resolution_mm: float) -> dict[str, torch.Tensor | np.ndarray]:
    """Tissue probabilities, hard labels, T1 template, brain mask and affine on the grid of ``resolution_mm``.

    Returns:
        ``probabilities`` float32 ``(5, X, Y, Z)`` in ``TISSUE_CLASSES`` order, ``labels`` uint8 ``(X, Y, Z)``,
        ``t1`` float32 ``(X, Y, Z)``, ``brain_mask`` bool ``(X, Y, Z)``, ``affine`` float64 ``(4, 4)``. Cached (the
        1 mm entry feeds every other resolution): callers must not modify them.
    """
    if resolution_mm == 1.0:
        templates = _templates_1mm()
        probabilities = torch.from_numpy(_tissue_probabilities_1mm(templates))
        t1 = torch.from_numpy(templates["t1"])
        brain_mask = torch.from_numpy(templates["brain_mask"])
        affine = templates["affine"]
    else:
        fine = _anatomy(1.0)
        probabilities = np.stack([_resample_linear(p.numpy(), resolution_mm) for p in fine["probabilities"]])
        probabilities /= probabilities.sum(axis=0, keepdims=True)  # rounding only: resampling is linear
        probabilities = torch.from_numpy(probabilities)
        t1 = torch.from_numpy(_resample_linear(fine["t1"].numpy(), resolution_mm))
        # nilearn's rule, applied to the resampled T1 as nilearn does for its own 2 mm mask.
        brain_mask = t1 > BRAIN_MASK_THRESHOLD
        affine = fine["affine"].copy()
        # Voxel 0 stays at the same world point; only the voxel size changes.
        affine[:3, :3] *= resolution_mm
    affine.setflags(write=False)
    # Labels depend on the anatomy only, never on a subject's tissue values, so they are computed once here.
    labels = _most_probable_class(probabilities)
    return {"probabilities": probabilities, "labels": labels, "t1": t1, "brain_mask": brain_mask, "affine": affine}


def _check_resolution(resolution_mm) -> float:
    """``resolution_mm`` as a float, or ``InputError`` naming it when it is not a usable voxel size in mm."""
    if isinstance(resolution_mm, bool) or not isinstance(resolution_mm, (int, float, np.integer, np.floating)):
        raise InputError("resolution_mm", f"voxel size must be a number of millimetres, got {resolution_mm!r}")
    value = float(resolution_mm)
    if not math.isfinite(value) or value <= 0:
        raise InputError("resolution_mm", f"voxel size must be a positive, finite number of mm, got {value}")
    if value < FINEST_RESOLUTION_MM:
        raise InputError(
            "resolution_mm",
            f"voxel size {value} mm is finer than {FINEST_RESOLUTION_MM} mm; the templates hold 1 mm detail and "
            "the grid's memory grows with the cube of 1 / resolution_mm",
        )
    return value


# ----------------------------------------------------------------------------------------------------------------
# Maps.


def _smooth_log_field(
    shape: tuple[int, int, int], resolution_mm: float, log_std: float, generator: torch.Generator
) -> torch.Tensor:
    """A smooth positive field ``exp(g)``, float32 ``shape``: ``g`` is N(0, log_std^2) on a coarse grid of control
    points about ``FIELD_CONTROL_SPACING_MM`` apart, upsampled trilinearly to the voxel grid."""
    # Control points are counted from the field of view in mm, so a seed gives the same field at every resolution.
    control_points = [max(2, round((n - 1) * resolution_mm / FIELD_CONTROL_SPACING_MM) + 1) for n in shape]
    coarse = log_std * torch.randn(1, 1, *control_points, generator=generator, dtype=torch.float32)
    log_field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]
    return torch.exp(log_field)


def _mix_maps(probabilities: torch.Tensor, parameters: dict[str, dict[str, float]]) -> dict[str, torch.Tensor]:
    """Partial-volume maps from tissue probabilities ``(5, X, Y, Z)``: PD summed, rates and MT water-weighted."""
    # Fast exchange: a voxel relaxes with the mean rate of its water, so each class counts by the water it holds.
    # Air holds none; its tiny weight only decides the rates of voxels with no water at all (no 0/0).
    water = [max(parameters[tissue]["pd"], AIR_WATER_WEIGHT) for tissue in TISSUE_CLASSES]
    rates = [quantity for quantity in TISSUE_QUANTITIES if quantity != "pd"]
    # Every sum is linear in the probabilities: one (2 + rates) x classes matrix times the probabilities computes
    # them all in one pass over the volume.
    coefficients = torch.tensor(
        [[parameters[tissue]["pd"] for tissue in TISSUE_CLASSES], water]
        + [[w * parameters[tissue][quantity] for w, tissue in zip(water, TISSUE_CLASSES)] for quantity in rates],
        dtype=torch.float32,
    )
    shape = probabilities.shape[1:]
    sums = (coefficients @ probabilities.reshape(len(TISSUE_CLASSES), -1)).reshape(-1, *shape)
    pd, water_weight = sums[0], sums[1]
    maps = {"pd": pd.clone()}
    for index, quantity in enumerate(rates):
        maps[quantity] = sums[2 + index] / water_weight
    return maps


def mni152_phantom(resolution_mm: float = 1.0, *, generator: torch.Generator | None = None) -> Phantom:
    """A qMRI head phantom on the MNI152 2009 anatomy (see the module docstring for tissues, values and mixing).

    Args:
        resolution_mm: isotropic voxel size in mm. 1.0 uses the templates as they are, shape ``(197, 233, 189)``;
            other values resample every template onto one grid that starts at the same world point (2.0 gives
            nilearn's 2 mm grid, ``(99, 117, 95)``). At least ``FINEST_RESOLUTION_MM``.
        generator: None for the deterministic nominal phantom; a CPU ``torch.Generator`` for one random subject:
            jittered tissue values (``tissue_parameters``) and a smooth multiplicative field on every map.

    Returns:
        A ``Phantom``: float32 maps, int64 labels, the affine, the real T1 template and the brain mask.

    Raises:
        InputError: naming ``resolution_mm`` when it is not a positive finite number of mm (or too fine).
    """
    resolution_mm = _check_resolution(resolution_mm)
    anatomy = _anatomy(resolution_mm)
    probabilities = anatomy["probabilities"]
    maps = _mix_maps(probabilities, tissue_parameters(generator))
    if generator is not None:
        shape = tuple(probabilities.shape[1:])
        for quantity in TISSUE_QUANTITIES:
            maps[quantity] *= _smooth_log_field(shape, resolution_mm, FIELD_LOG_STD[quantity], generator)
        # A voxel cannot hold more water than pure water.
        maps["pd"].clamp_(max=1.0)
    return Phantom(
        maps=maps,
        labels=anatomy["labels"].long(),
        affine=np.array(anatomy["affine"], dtype=np.float64),
        reference_t1=anatomy["t1"].clone(),
        brain_mask=anatomy["brain_mask"].clone(),
    )


def mprage_fidelity(phantom: Phantom) -> dict[str, float]:
    """How well an MPRAGE simulated from the phantom matches the real MNI152 T1 template inside the brain mask.

    The image is ``simulate(phantom.maps, "mprage", TYPICAL_PROTOCOLS["mprage"])``; the template is an average of
    real 3D T1-weighted scans, so a faithful phantom ranks and scales its voxels alike.

    Returns:
        ``{"pearson_r": linear correlation, "spearman_r": rank correlation, "voxels": count}`` over the voxels of
        ``phantom.brain_mask``.
    """
    image = simulate(phantom.maps, "mprage", TYPICAL_PROTOCOLS["mprage"])
    inside = phantom.brain_mask
    simulated = image[inside].double().numpy()
    reference = phantom.reference_t1[inside].double().numpy()
    return {
        "pearson_r": float(np.corrcoef(simulated, reference)[0, 1]),
        "spearman_r": float(stats.spearmanr(simulated, reference).statistic),
        "voxels": float(inside.sum()),
    }
