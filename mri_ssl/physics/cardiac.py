"""A 2-D beating-heart phantom rendered through the physics simulator into the five cardiac MR sequence classes.

API (everything random comes from a ``numpy.random.Generator`` the caller seeds)
    - ``HeartAnatomy(...)``: one subject's anatomy and pathology (validated); ``sample_anatomy(rng)`` draws one.
    - ``render_slice(anatomy, sequence_class, phase, view, slice_position, rng)``: one image (``CardiacImage``: the
      image, the tissue label map, the protocol drawn).
    - ``render_cine(anatomy, frames, view, ...)``: ``(frames, H, W)`` bSSFP frames over one cardiac cycle.
    - ``render_series(anatomy, sequence_class, rng, slices, cine_frames)`` / ``render_study(anatomy, rng)``: what a
      scanner acquires, one protocol per series, a series per class per study (the bundle's demo data).
    - ``tissue_fractions(anatomy, view, phase, ...)`` + ``tissue_rates`` + ``qmri_maps``: the geometry and the qMRI
      maps alone, for other signal models.

Anatomy (``HeartAnatomy``, one per subject; ``sample_anatomy`` draws healthy and diseased hearts)
    Slices are drawn in millimetres on a supersampled grid and area-averaged to the output matrix, so edges carry
    partial volume. The tissues (``CARDIAC_TISSUES``) are background (air), body soft tissue (skeletal muscle),
    subcutaneous fat, lungs, liver, left-ventricular (LV) myocardium, blood (LV, RV and atrial cavities) and an
    optional myocardial scar. The RV free wall is thin myocardium around the RV cavity.

    - ``short_axis``: the LV a ring (myocardium) around a disc (blood pool), the RV a crescent beside it, lungs on
      both sides, liver below; ``slice_position`` runs from -1 (base) to 1 (apex), where the LV narrows to half.
    - ``long_axis``: a four-chamber-like view: LV and RV as half-ellipses open at the valve plane, both atria above
      it, the apex pointing down-right.

Pathology parameters
    LV dilation (``lv_radius_mm``, the end-diastolic cavity radius), wall thickness (``wall_thickness_mm``),
    contraction (``ejection_fraction``: the cavity's area shrinks by that fraction at end systole; the wall keeps its
    area, so it thickens), scar (``scar_center_deg`` measured anticlockwise from the image's +x axis around the LV
    centre, ``scar_extent_deg``, ``scar_transmurality`` from the endocardium outward; extent 0 means no scar) and RV
    size (``rv_scale``).

Cardiac phase
    ``phase`` in [0, 1) is the fraction of the R-R interval; contraction rises smoothly to end systole at
    ``END_SYSTOLE_PHASE`` and relaxes back (a raised-cosine in each part).

Tissue values at 1.5 T (``NATIVE_TISSUE_PARAMETERS``; PD a fraction of water, times in ms)
    ==============  ====  =====  =====  =====  ====
    tissue          PD    T1     T2     T2*    ECV
    ==============  ====  =====  =====  =====  ====
    background      0     1000   50     20     0
    muscle          0.75  1008   44     30     0.10
    fat             0.90  343    58     15     0.05
    lung            0.15  1200   40     2      0.30
    liver           0.70  586    46     30     0.30
    myocardium      0.80  1000   52     35     0.25
    blood           0.95  1550   250    150    0.58
    scar            0.85  1150   58     30     0.60
    ==============  ====  =====  =====  =====  ====

    Sources: muscle, fat and liver T1/T2 at 1.5 T from de Bazelaire et al. (Radiology 2004;230:652-659); native
    myocardial and blood T1 from MOLLI at 1.5 T (Messroghli et al., JMRI 2007;26:1081-1086; Kellman and Hansen,
    JCMR 2014;16:2); myocardial T2 about 52 ms (Giri et al., JCMR 2009;11:56); blood T2 250 ms (arterial blood at
    1.5 T, Stanisz et al. MRM 2005 report 290 ms); myocardial T2* above 20 ms in health (Anderson et al., Eur Heart J
    2001;22:2171-2179); lung T2* about 2 ms at 1.5 T. Chronic infarct: native T1 raised by 10-20 %, ECV 0.5-0.7;
    normal myocardial ECV 0.25 (Haaf et al., JCMR 2016;18:89); blood ECV is 1 - haematocrit.

Contrast agent (LGE, perfusion)
    Gadolinium stays extracellular, so a tissue's concentration is ``ECV * c_plasma`` and its rates rise by
    ``r1 * c`` and ``r2 * c`` (relaxivities ``GADOLINIUM_R1``, ``GADOLINIUM_R2`` per mM per s, gadobutrol-like at
    1.5 T, Rohrer et al., Invest Radiol 2005;40:715-724). 10-15 min after 0.15 mmol/kg the plasma holds roughly
    0.5-0.9 mM, which puts blood T1 near 400 ms, myocardium near 550 ms and scar near 350 ms: the scar, with more
    extracellular space, is the brightest tissue once the inversion time nulls normal myocardium.

Sequence classes (``SEQUENCE_CLASSES``) and their physics (``render_slice``)
    - ``T1``: black-blood spin echo (``fse`` equation), TR 0.5-0.9 s (one R-R), TE 8-20 ms.
    - ``T2``: black-blood spin echo, TR 1.6-2.4 s (two R-R), TE 60-90 ms. Black blood: the double-inversion
      preparation replaces the slice's blood by inflowing inverted blood, left at a few percent of its signal.
    - ``Cine``: balanced SSFP (``bssfp``), TR 2.8-4 ms, flip 45-70 degrees, at any phase of the cycle.
    - ``LGE``: inversion-recovery gradient echo after gadolinium, with TI nulling normal myocardium (the IR magnitude
      ``|1 - 2 exp(-TI R1) + exp(-TR R1)| exp(-TE R2*)``, as in ``flair``), TI off its null by up to 8 %.
    - ``Other``: a T1 map or a T2 map (the map in ms, scaled), a first-pass perfusion image (saturation-recovery
      GRE with gadolinium still in the blood), or a low-resolution bSSFP scout with a larger field of view.

Acquisition effects (per image): a smooth receive-coil shading (the exponential of a random quadratic), Rician
noise with sigma a random 1-5 % of the body's 99th-percentile signal, and a display scaling of the 99th percentile
to 1. Everything random is drawn from a ``numpy.random.Generator`` the caller seeds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from mri_ssl.errors import InputError
from mri_ssl.physics.sequences import bssfp, flair, fse, rician_noise

SEQUENCE_CLASSES = ("T1", "T2", "Cine", "LGE", "Other")
OTHER_KINDS = ("t1_map", "t2_map", "perfusion", "scout")
VIEWS = ("short_axis", "long_axis")
CARDIAC_TISSUES = ("background", "muscle", "fat", "lung", "liver", "myocardium", "blood", "scar")
TISSUE_INDEX = {name: index for index, name in enumerate(CARDIAC_TISSUES)}

# PD (fraction of water), T1, T2, T2* (ms) and extracellular volume fraction at 1.5 T; sources in the docstring.
NATIVE_TISSUE_PARAMETERS = {
    "background": {"pd": 0.0, "t1": 1000.0, "t2": 50.0, "t2s": 20.0, "ecv": 0.0},
    "muscle": {"pd": 0.75, "t1": 1008.0, "t2": 44.0, "t2s": 30.0, "ecv": 0.10},
    "fat": {"pd": 0.90, "t1": 343.0, "t2": 58.0, "t2s": 15.0, "ecv": 0.05},
    "lung": {"pd": 0.15, "t1": 1200.0, "t2": 40.0, "t2s": 2.0, "ecv": 0.30},
    "liver": {"pd": 0.70, "t1": 586.0, "t2": 46.0, "t2s": 30.0, "ecv": 0.30},
    "myocardium": {"pd": 0.80, "t1": 1000.0, "t2": 52.0, "t2s": 35.0, "ecv": 0.25},
    "blood": {"pd": 0.95, "t1": 1550.0, "t2": 250.0, "t2s": 150.0, "ecv": 0.58},
    "scar": {"pd": 0.85, "t1": 1150.0, "t2": 58.0, "t2s": 30.0, "ecv": 0.60},
}
GADOLINIUM_R1 = 4.5  # 1/(mM s) at 1.5 T
GADOLINIUM_R2 = 5.5  # 1/(mM s) at 1.5 T
END_SYSTOLE_PHASE = 0.35  # fraction of the R-R interval
DEFAULT_MATRIX = 84  # pixels per side: the paper resamples every image to 84 x 84
DEFAULT_FOV_MM = 300.0
SUPERSAMPLING = 3  # drawing grid points per output pixel and axis (partial volume at edges)
BLACK_BLOOD_RESIDUAL = (0.02, 0.10)  # fraction of the blood signal a double-IR preparation leaves


@dataclass(frozen=True)
class HeartAnatomy:
    """One subject's anatomy and pathology; lengths in mm, angles in degrees. See the module docstring.

    ``heart_center_mm`` is the LV centre relative to the body centre (x right, y down in the image);
    ``heart_rotation_deg`` turns the whole heart (both views) about it.
    """

    lv_radius_mm: float = 25.0
    wall_thickness_mm: float = 9.0
    ejection_fraction: float = 0.6
    rv_scale: float = 1.0
    scar_center_deg: float = 0.0
    scar_extent_deg: float = 0.0
    scar_transmurality: float = 0.0
    heart_center_mm: tuple = (15.0, -5.0)
    heart_rotation_deg: float = 0.0
    body_semi_axes_mm: tuple = (165.0, 115.0)
    fat_thickness_mm: float = 12.0

    def __post_init__(self):
        checks = [
            ("lv_radius_mm", 10.0 <= self.lv_radius_mm <= 45.0, "an end-diastolic LV cavity radius in [10, 45] mm"),
            ("wall_thickness_mm", 3.0 <= self.wall_thickness_mm <= 25.0, "a wall thickness in [3, 25] mm"),
            ("ejection_fraction", 0.0 <= self.ejection_fraction <= 0.85, "a fraction in [0, 0.85]"),
            ("rv_scale", 0.5 <= self.rv_scale <= 2.0, "a relative RV size in [0.5, 2]"),
            ("scar_extent_deg", 0.0 <= self.scar_extent_deg <= 360.0, "an angle in [0, 360] degrees"),
            ("scar_transmurality", 0.0 <= self.scar_transmurality <= 1.0, "a fraction of the wall in [0, 1]"),
            ("fat_thickness_mm", 0.0 <= self.fat_thickness_mm <= 50.0, "a thickness in [0, 50] mm"),
        ]
        for name, ok, expected in checks:
            value = getattr(self, name)
            if not (ok and math.isfinite(float(value))):
                raise InputError(name, f"expected {expected}, got {value!r}")
        if len(self.body_semi_axes_mm) != 2 or min(self.body_semi_axes_mm) < 60:
            raise InputError("body_semi_axes_mm", f"expected two semi-axes >= 60 mm, got {self.body_semi_axes_mm}")
        if len(self.heart_center_mm) != 2:
            raise InputError("heart_center_mm", f"expected (x, y) in mm, got {self.heart_center_mm}")

    @property
    def has_scar(self) -> bool:
        return self.scar_extent_deg > 0 and self.scar_transmurality > 0

    def replace(self, **changes) -> "HeartAnatomy":
        return dataclasses.replace(self, **changes)


def contraction(phase: float) -> float:
    """How far the heart has contracted at ``phase`` (fraction of R-R): 0 at end diastole, 1 at end systole."""
    if not (math.isfinite(phase) and 0.0 <= phase <= 1.0):
        raise InputError("phase", f"expected a fraction of the R-R interval in [0, 1], got {phase!r}")
    if phase <= END_SYSTOLE_PHASE:
        return 0.5 * (1.0 - math.cos(math.pi * phase / END_SYSTOLE_PHASE))
    return 0.5 * (1.0 + math.cos(math.pi * (phase - END_SYSTOLE_PHASE) / (1.0 - END_SYSTOLE_PHASE)))


def lv_radii_mm(anatomy: HeartAnatomy, phase: float, scale: float = 1.0) -> tuple[float, float]:
    """Endocardial and epicardial radii at ``phase``: the cavity area shrinks by EF x contraction, the wall keeps
    its area (incompressible myocardium), so the wall thickens in systole."""
    cavity_ed = anatomy.lv_radius_mm * scale
    wall_area = math.pi * ((cavity_ed + anatomy.wall_thickness_mm) ** 2 - cavity_ed ** 2)
    cavity = cavity_ed * math.sqrt(1.0 - anatomy.ejection_fraction * contraction(phase))
    return cavity, math.sqrt(cavity ** 2 + wall_area / math.pi)


def sample_anatomy(rng: np.random.Generator, disease_probability: float = 0.5) -> HeartAnatomy:
    """A random subject: healthy, or with any of dilated / hypertrophied LV, low EF, scar, enlarged RV."""
    radius = rng.normal(24.0, 2.0)
    wall = rng.uniform(7.5, 10.5)
    ef = rng.uniform(0.55, 0.70)
    rv = rng.normal(1.0, 0.08)
    scar = (0.0, 0.0, 0.0)
    if rng.random() < disease_probability:
        kind = rng.choice(["dilated", "hypertrophic", "infarct", "rv"])
        if kind == "dilated":
            radius, wall, ef = rng.uniform(30.0, 38.0), rng.uniform(5.0, 8.0), rng.uniform(0.15, 0.40)
        elif kind == "hypertrophic":
            wall, radius, ef = rng.uniform(13.0, 20.0), rng.uniform(18.0, 23.0), rng.uniform(0.6, 0.8)
        elif kind == "infarct":
            scar = (rng.uniform(0.0, 360.0), rng.uniform(40.0, 130.0), rng.uniform(0.3, 1.0))
            ef = rng.uniform(0.30, 0.55)
        else:
            rv = rng.uniform(1.3, 1.7)
    return HeartAnatomy(
        lv_radius_mm=float(np.clip(radius, 15.0, 40.0)), wall_thickness_mm=float(wall), ejection_fraction=float(ef),
        rv_scale=float(np.clip(rv, 0.7, 1.8)), scar_center_deg=float(scar[0]), scar_extent_deg=float(scar[1]),
        scar_transmurality=float(scar[2]),
        heart_center_mm=(float(rng.normal(15.0, 6.0)), float(rng.normal(-5.0, 6.0))),
        heart_rotation_deg=float(rng.normal(0.0, 12.0)),
        body_semi_axes_mm=(float(rng.uniform(145.0, 180.0)), float(rng.uniform(100.0, 130.0))),
        fat_thickness_mm=float(rng.uniform(5.0, 25.0)),
    )


# ----------------------------------------------------------------------------------------------------------------
# Geometry: a tissue index per point of a supersampled grid, area-averaged into fractions per output pixel.


def _grid_mm(matrix: int, fov_mm: float, supersampling: int) -> tuple[np.ndarray, np.ndarray]:
    n = matrix * supersampling
    centres = (np.arange(n) + 0.5) / n * fov_mm - fov_mm / 2
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return x, y


def _in_ellipse(x, y, cx, cy, a, b, angle_rad=0.0):
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _paint_body(x, y, anatomy: HeartAnatomy) -> np.ndarray:
    a, b = anatomy.body_semi_axes_mm
    labels = np.full(x.shape, TISSUE_INDEX["background"], dtype=np.int64)
    labels[_in_ellipse(x, y, 0, 0, a, b)] = TISSUE_INDEX["fat"]
    inner_a, inner_b = a - anatomy.fat_thickness_mm, b - anatomy.fat_thickness_mm
    labels[_in_ellipse(x, y, 0, 0, inner_a, inner_b)] = TISSUE_INDEX["muscle"]
    for side in (-1, 1):  # lungs on both sides of the heart, in the upper chest
        labels[_in_ellipse(x, y, side * 0.45 * inner_a, -0.1 * inner_b, 0.33 * inner_a, 0.62 * inner_b)] = \
            TISSUE_INDEX["lung"]
    labels[_in_ellipse(x, y, -0.35 * inner_a, 0.75 * inner_b, 0.45 * inner_a, 0.35 * inner_b)] = TISSUE_INDEX["liver"]
    return labels


def _heart_coordinates(x, y, anatomy: HeartAnatomy):
    """Coordinates in the heart's frame: origin at the LV centre, rotated by ``heart_rotation_deg``."""
    cx, cy = anatomy.heart_center_mm
    angle = math.radians(anatomy.heart_rotation_deg)
    c, s = math.cos(angle), math.sin(angle)
    return (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c


def _scar_mask(u, v, anatomy: HeartAnatomy, inner, outer, myocardium) -> np.ndarray:
    """The scar: an angular sector of the myocardium around the LV centre, from the endocardium outward."""
    if not anatomy.has_scar:
        return np.zeros(u.shape, dtype=bool)
    angle = np.degrees(np.arctan2(-v, u))  # anticlockwise on screen (y points down)
    offset = (angle - anatomy.scar_center_deg + 180.0) % 360.0 - 180.0
    in_sector = np.abs(offset) <= anatomy.scar_extent_deg / 2
    depth = inner + anatomy.scar_transmurality * (outer - inner)
    return myocardium & in_sector & (np.hypot(u, v) <= depth)


def _paint_short_axis(labels, x, y, anatomy: HeartAnatomy, phase: float, slice_position: float) -> None:
    # Towards the apex the ventricle narrows: to half its basal radius at slice_position = 1.
    along = 0.5 * (slice_position + 1.0)
    scale = math.sqrt(max(1.0 - 0.75 * along ** 2, 0.25))
    u, v = _heart_coordinates(x, y, anatomy)
    inner, outer = lv_radii_mm(anatomy, phase, scale)
    radius = np.hypot(u, v)
    # RV: a cavity beside the LV (image left), thin free wall, wrapped around the septum; smaller towards the apex.
    rv_extent = max(0.15, 1.0 - 0.8 * along) * anatomy.rv_scale
    rv_a, rv_b = (outer * 0.75 + 8.0) * rv_extent, outer * 1.1 * max(rv_extent, 0.7)
    rv_squeeze = math.sqrt(1.0 - 0.8 * anatomy.ejection_fraction * contraction(phase))
    rv_centre = -(outer + rv_a * 0.45 * rv_squeeze)
    rv_wall = _in_ellipse(u, v, rv_centre, 0.0, rv_a * rv_squeeze + 3.0, rv_b + 3.0)
    labels[rv_wall] = TISSUE_INDEX["myocardium"]
    labels[_in_ellipse(u, v, rv_centre, 0.0, rv_a * rv_squeeze, rv_b)] = TISSUE_INDEX["blood"]
    myocardium = radius <= outer
    labels[myocardium] = TISSUE_INDEX["myocardium"]
    labels[radius <= inner] = TISSUE_INDEX["blood"]
    labels[_scar_mask(u, v, anatomy, inner, outer, myocardium & (radius > inner))] = TISSUE_INDEX["scar"]


def _paint_long_axis(labels, x, y, anatomy: HeartAnatomy, phase: float) -> None:
    # The heart's long axis points down-right (apex) at 40 degrees plus the subject's rotation.
    cx, cy = anatomy.heart_center_mm
    axis = math.radians(40.0 + anatomy.heart_rotation_deg)
    c, s = math.cos(axis), math.sin(axis)
    along = (x - cx) * c + (y - cy) * s  # towards the apex
    across = -(x - cx) * s + (y - cy) * c  # towards the RV (image left-down of the LV)
    shortening = 1.0 - 0.15 * contraction(phase)
    inner, outer = lv_radii_mm(anatomy, phase)
    wall = outer - inner
    length = 2.2 * anatomy.lv_radius_mm * shortening
    base = -0.35 * length  # the valve plane cuts the ellipse here
    above_valves = along < base
    rv_a = inner * 0.8 * anatomy.rv_scale
    rv_offset = -(outer + rv_a + 3.0)
    rv_cavity = ((along / (0.85 * length)) ** 2 + ((across - rv_offset) / rv_a) ** 2 <= 1.0) & ~above_valves
    rv_wall = ((along / (0.85 * length + 3.0)) ** 2 + ((across - rv_offset) / (rv_a + 3.0)) ** 2 <= 1.0) \
        & ~above_valves
    labels[rv_wall] = TISSUE_INDEX["myocardium"]
    labels[rv_cavity] = TISSUE_INDEX["blood"]
    lv_outer = ((along / (length + wall)) ** 2 + (across / outer) ** 2 <= 1.0) & ~above_valves
    lv_inner = ((along / length) ** 2 + (across / inner) ** 2 <= 1.0) & ~above_valves
    labels[lv_outer] = TISSUE_INDEX["myocardium"]
    labels[lv_inner] = TISSUE_INDEX["blood"]
    # Atria above the valve plane: blood, bigger in ventricular systole (they fill while the ventricles empty).
    atrium = 0.7 * anatomy.lv_radius_mm * (1.0 + 0.15 * contraction(phase))
    labels[((along - base + atrium) / atrium) ** 2 + (across / atrium) ** 2 <= 1.0] = TISSUE_INDEX["blood"]
    labels[((along - base + atrium) / atrium) ** 2 + ((across - rv_offset) / (0.8 * atrium)) ** 2 <= 1.0] = \
        TISSUE_INDEX["blood"]
    # Scar: the same angular sector around the LV centre as in short axis, in the (across, along) frame; depth
    # through the wall from elliptical radii, 1 on the endocardium (endo) and on the epicardium (epi).
    if anatomy.has_scar:
        endo = np.hypot(across / inner, along / length)
        epi = np.hypot(across / outer, along / (length + wall))
        through = (endo - 1.0) / np.maximum(endo - epi, 1e-6)  # 0 at the endocardium, 1 at the epicardium
        angle = np.degrees(np.arctan2(-across, along))
        offset = (angle - anatomy.scar_center_deg + 180.0) % 360.0 - 180.0
        scar = lv_outer & ~lv_inner & (np.abs(offset) <= anatomy.scar_extent_deg / 2) \
            & (through <= anatomy.scar_transmurality)
        labels[scar] = TISSUE_INDEX["scar"]


def tissue_fractions(anatomy: HeartAnatomy, view: str = "short_axis", phase: float = 0.0,
                     slice_position: float = 0.0, matrix: int = DEFAULT_MATRIX, fov_mm: float = DEFAULT_FOV_MM,
                     supersampling: int = SUPERSAMPLING) -> np.ndarray:
    """Partial-volume fractions of each tissue, float32 ``(len(CARDIAC_TISSUES), matrix, matrix)`` summing to 1.

    Args:
        anatomy: the subject. view: ``short_axis`` or ``long_axis``. phase: fraction of the R-R interval.
        slice_position: short axis only, -1 (base) to 1 (apex). matrix: output pixels per side.
        fov_mm: field of view per side. supersampling: drawing points per pixel and axis.
    """
    if view not in VIEWS:
        raise InputError("view", f"expected one of {', '.join(VIEWS)}, got {view!r}")
    if not -1.0 <= float(slice_position) <= 1.0:
        raise InputError("slice_position", f"expected -1 (base) to 1 (apex), got {slice_position!r}")
    if int(matrix) < 8 or not fov_mm > 0 or int(supersampling) < 1:
        raise InputError("matrix", f"need matrix >= 8, fov_mm > 0, supersampling >= 1; got {matrix}, {fov_mm}, "
                                   f"{supersampling}")
    contraction(phase)  # validates the phase
    x, y = _grid_mm(int(matrix), float(fov_mm), int(supersampling))
    labels = _paint_body(x, y, anatomy)
    if view == "short_axis":
        _paint_short_axis(labels, x, y, anatomy, phase, float(slice_position))
    else:
        _paint_long_axis(labels, x, y, anatomy, phase)
    one_hot = np.eye(len(CARDIAC_TISSUES), dtype=np.float32)[labels]  # (n, n, tissues)
    n, k = int(matrix), int(supersampling)
    return one_hot.reshape(n, k, n, k, -1).mean(axis=(1, 3)).transpose(2, 0, 1)


def tissue_labels(fractions: np.ndarray) -> np.ndarray:
    """The most abundant tissue per pixel, an index into ``CARDIAC_TISSUES``."""
    return np.argmax(fractions, axis=0)


# ----------------------------------------------------------------------------------------------------------------
# Tissue values -> qMRI maps


def tissue_rates(plasma_gadolinium_mM: float = 0.0, first_pass: bool = False) -> dict[str, dict[str, float]]:
    """PD and rates (1/s) per tissue, with gadolinium at ``plasma_gadolinium_mM`` in the extracellular space.

    ``first_pass``: the bolus is still in the blood (all of the plasma concentration there) and tissue holds a
    fifth of its equilibrium share, as in the first seconds of a perfusion scan.
    """
    rates = {}
    for name, values in NATIVE_TISSUE_PARAMETERS.items():
        share = values["ecv"] * plasma_gadolinium_mM
        if first_pass and name != "blood":
            share *= 0.2
        rates[name] = {
            "pd": values["pd"],
            "r1": 1000.0 / values["t1"] + GADOLINIUM_R1 * share,
            "r2": 1000.0 / values["t2"] + GADOLINIUM_R2 * share,
            "r2s": 1000.0 / values["t2s"] + GADOLINIUM_R2 * share,
        }
    return rates


def qmri_maps(fractions: np.ndarray, rates: Mapping[str, Mapping[str, float]]) -> dict[str, torch.Tensor]:
    """PD, R1, R2, R2* maps (float32 tensors) from tissue fractions: PD mixes linearly, rates water-weighted (the
    fast-exchange limit, as in ``mri_ssl.physics.phantom``)."""
    pd_values = np.array([rates[t]["pd"] for t in CARDIAC_TISSUES], dtype=np.float64)
    water = fractions * pd_values[:, None, None]
    pd = water.sum(axis=0)
    weight = np.maximum(pd, 1e-6)
    maps = {"pd": torch.as_tensor(pd, dtype=torch.float32)}
    for quantity in ("r1", "r2", "r2s"):
        values = np.array([rates[t][quantity] for t in CARDIAC_TISSUES], dtype=np.float64)
        mixed = (water * values[:, None, None]).sum(axis=0) / weight
        background = rates["background"][quantity]
        maps[quantity] = torch.as_tensor(np.where(pd > 1e-6, mixed, background), dtype=torch.float32)
    return maps


def lge_null_ti(r1: float, tr: float) -> float:
    """Inversion time (s) that nulls a tissue of rate ``r1`` (1/s) with repetition ``tr`` (s):
    ``1 - 2 exp(-TI R1) + exp(-TR R1) = 0``."""
    return -math.log((1.0 + math.exp(-tr * r1)) / 2.0) / r1


# ----------------------------------------------------------------------------------------------------------------
# Rendering


@dataclass
class CardiacImage:
    """One rendered slice. ``image``: float32 ``(matrix, matrix)``, display-scaled; ``labels``: tissue index per
    pixel; ``protocol``: the acquisition parameters drawn (seconds, radians, mM); ``kind``: the ``Other`` subtype or
    the class name."""

    image: np.ndarray
    labels: np.ndarray
    sequence_class: str
    kind: str
    view: str
    phase: float
    protocol: dict
    slice_position: float = 0.0
    slice_index: int = 0
    frame: int = 0


def _coil_shading(matrix: int, rng: np.random.Generator, strength: float = 0.25) -> torch.Tensor:
    """A smooth receive field: the exponential of a random quadratic over the image, mean about 1."""
    grid = np.linspace(-1.0, 1.0, matrix)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    coefficients = rng.normal(0.0, strength, size=5)
    log_field = coefficients[0] * x + coefficients[1] * y + coefficients[2] * x * y \
        + coefficients[3] * (x ** 2 - 1 / 3) + coefficients[4] * (y ** 2 - 1 / 3)
    return torch.as_tensor(np.exp(log_field), dtype=torch.float32)


def _blood_fraction(fractions: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(fractions[TISSUE_INDEX["blood"]], dtype=torch.float32)


def _signal(sequence_class: str, kind: str, fractions: np.ndarray, rng: np.random.Generator
            ) -> tuple[torch.Tensor, dict]:
    """Noise-free signal of one class (before coil shading) and the protocol drawn."""
    native = qmri_maps(fractions, tissue_rates())
    if sequence_class in ("T1", "T2"):
        if sequence_class == "T1":
            protocol = {"tr": rng.uniform(0.5, 0.9), "te": rng.uniform(0.008, 0.020)}
        else:
            protocol = {"tr": rng.uniform(1.6, 2.4), "te": rng.uniform(0.060, 0.090)}
        residual = rng.uniform(*BLACK_BLOOD_RESIDUAL)
        protocol["black_blood_residual"] = residual
        signal = fse(native["pd"], native["r1"], native["r2"], tr=protocol["tr"], te=protocol["te"])
        return signal * (1.0 - (1.0 - residual) * _blood_fraction(fractions)), protocol
    if sequence_class == "Cine" or kind == "scout":
        tr = rng.uniform(0.0028, 0.0040)
        protocol = {"tr": tr, "te": tr / 2, "flip_angle": math.radians(rng.uniform(45.0, 70.0))}
        return bssfp(native["pd"], native["r1"], native["r2"], **protocol), protocol
    if sequence_class == "LGE":
        plasma = rng.uniform(0.5, 0.9)
        rates = tissue_rates(plasma)
        maps = qmri_maps(fractions, rates)
        tr = rng.uniform(1.4, 2.0)  # every other heartbeat
        ti = lge_null_ti(rates["myocardium"]["r1"], tr) * rng.uniform(0.92, 1.08)
        protocol = {"tr": tr, "ti": ti, "te": rng.uniform(0.002, 0.004), "plasma_gadolinium_mM": plasma}
        signal = flair(maps["pd"], maps["r1"], maps["r2s"], tr=tr, te=protocol["te"], ti=ti)
        return signal, protocol
    if kind == "t1_map":
        t1_ms = 1000.0 / native["r1"]
        return native["pd"].gt(0.05).float() * t1_ms / 2000.0, {"map": "T1 (ms) / 2000"}
    if kind == "t2_map":
        t2_ms = 1000.0 / native["r2"]
        return native["pd"].gt(0.05).float() * torch.clamp(t2_ms, max=150.0) / 150.0, {"map": "T2 (ms) / 150"}
    if kind == "perfusion":
        plasma = rng.uniform(2.0, 5.0)
        maps = qmri_maps(fractions, tissue_rates(plasma, first_pass=True))
        saturation_delay = rng.uniform(0.08, 0.12)
        protocol = {"saturation_delay": saturation_delay, "flip_angle": math.radians(rng.uniform(10.0, 15.0)),
                    "te": rng.uniform(0.001, 0.0015), "plasma_gadolinium_mM": plasma}
        # Saturation recovery: Mz = 1 - exp(-R1 TS) at the centre of k-space.
        mz = 1.0 - torch.exp(-maps["r1"] * saturation_delay)
        return maps["pd"] * mz * math.sin(protocol["flip_angle"]) * torch.exp(-maps["r2s"] * protocol["te"]), protocol
    raise InputError("kind", f"unknown image kind {kind!r} for class {sequence_class!r}")


def render_slice(anatomy: HeartAnatomy, sequence_class: str, phase: float | None = None, view: str = "short_axis",
                 slice_position: float = 0.0, rng: np.random.Generator | None = None, kind: str | None = None,
                 matrix: int = DEFAULT_MATRIX, fov_mm: float | None = None, noise: bool = True,
                 shading: bool = True, noise_rng: np.random.Generator | None = None) -> CardiacImage:
    """Render one slice of ``anatomy`` as an image of ``sequence_class`` at cardiac ``phase``.

    Args:
        anatomy: the subject (``HeartAnatomy`` or ``sample_anatomy(rng)``).
        sequence_class: one of ``SEQUENCE_CLASSES``.
        phase: fraction of the R-R interval; default: mid-diastole (0.75), where triggered static images are taken.
        view: ``short_axis`` or ``long_axis``. slice_position: short axis, -1 (base) to 1 (apex).
        rng: source of the protocol, shading and noise draws (default: a fresh seed-0 generator).
        kind: for ``Other``, one of ``OTHER_KINDS`` (default: drawn); ignored for the other classes.
        matrix: output pixels per side. fov_mm: field of view (default 300 mm; scouts use 420-480 mm).
        noise, shading: add Rician noise and coil shading (on by default).
        noise_rng: where the noise itself is drawn (default: ``rng``). Images of one acquisition (cine frames) share
            ``rng`` seeds, hence protocol, shading and noise level, and differ in ``noise_rng``.
    """
    if sequence_class not in SEQUENCE_CLASSES:
        raise InputError("sequence_class", f"expected one of {', '.join(SEQUENCE_CLASSES)}, got {sequence_class!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    if sequence_class == "Other":
        kind = kind if kind is not None else str(rng.choice(OTHER_KINDS))
        if kind not in OTHER_KINDS:
            raise InputError("kind", f"expected one of {', '.join(OTHER_KINDS)}, got {kind!r}")
    else:
        kind = sequence_class
    phase = 0.75 if phase is None else float(phase)
    if fov_mm is None:
        fov_mm = rng.uniform(420.0, 480.0) if kind == "scout" else DEFAULT_FOV_MM
    fractions = tissue_fractions(anatomy, view, phase, slice_position, matrix, fov_mm)
    signal, protocol = _signal(sequence_class, kind, fractions, rng)
    if kind == "scout":  # a fast low-resolution localiser: half the matrix, interpolated back
        low = torch.nn.functional.avg_pool2d(signal[None, None], 2)
        signal = torch.nn.functional.interpolate(low, size=signal.shape, mode="bilinear", align_corners=False)[0, 0]
    if shading:
        signal = signal * _coil_shading(matrix, rng)
    body = torch.as_tensor(fractions[TISSUE_INDEX["background"]] < 0.5)
    reference = float(torch.quantile(signal[body], 0.99)) if bool(body.any()) else float(signal.max())
    reference = reference if reference > 0 else 1.0
    if noise:
        sigma = rng.uniform(0.01, 0.05) * reference
        generator = torch.Generator().manual_seed(int((noise_rng or rng).integers(2 ** 31)))
        signal = rician_noise(signal, sigma, generator=generator)
        protocol["noise_sigma_fraction"] = sigma / reference
    image = (signal / reference).numpy().astype(np.float32)
    protocol = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in protocol.items()}
    return CardiacImage(image=image, labels=tissue_labels(fractions), sequence_class=sequence_class, kind=kind,
                        view=view, phase=phase, protocol=protocol, slice_position=float(slice_position))


def render_cine(anatomy: HeartAnatomy, frames: int = 25, view: str = "short_axis", slice_position: float = 0.0,
                rng: np.random.Generator | None = None, matrix: int = DEFAULT_MATRIX, noise: bool = True
                ) -> np.ndarray:
    """A cine series: ``frames`` bSSFP frames evenly spaced over one R-R interval, float32 ``(frames, H, W)``.

    One protocol and one coil shading serve all frames (one acquisition); noise is drawn per frame.
    """
    if int(frames) < 1:
        raise InputError("frames", f"expected at least 1 frame, got {frames}")
    rng = rng if rng is not None else np.random.default_rng(0)
    state = int(rng.integers(2 ** 31))
    images = []
    for index in range(int(frames)):
        image = render_slice(anatomy, "Cine", phase=index / int(frames), view=view, slice_position=slice_position,
                             rng=np.random.default_rng(state), noise_rng=np.random.default_rng([state, index]),
                             matrix=matrix, noise=noise)
        images.append(image.image)
    return np.stack(images)


def render_series(anatomy: HeartAnatomy, sequence_class: str, rng: np.random.Generator, slices: int = 2,
                  cine_frames: int = 3, view: str | None = None, kind: str | None = None,
                  matrix: int = DEFAULT_MATRIX) -> list[CardiacImage]:
    """One series as a scanner acquires it: one protocol, coil shading and noise level for all of its images.

    Args:
        anatomy: the subject. sequence_class: one of ``SEQUENCE_CLASSES``.
        rng: the source of every draw (view, protocol, phases, noise).
        slices: short-axis slices, evenly spaced between slice positions -0.3 and 0.3 (mid-ventricle); a long-axis
            series has one slice.
        cine_frames: frames per cine slice, evenly spaced over the R-R interval from a random start; other classes
            are one image per slice, triggered in mid-to-late diastole (phase 0.6-0.95).
        view: ``short_axis`` or ``long_axis``; default drawn (70 % short axis).
        kind: the ``Other`` subtype; default drawn once for the series.
        matrix: output pixels per side.
    Returns the images in slice, then frame order, each with ``slice_index`` and ``frame`` set.
    """
    if int(slices) < 1 or int(cine_frames) < 1:
        raise InputError("slices", f"need at least one slice and one cine frame, got {slices} and {cine_frames}")
    if view is None:
        view = "short_axis" if rng.random() < 0.7 else "long_axis"
    state = int(rng.integers(2 ** 31))
    positions = [0.0] if view == "long_axis" else list(np.linspace(-0.3, 0.3, slices) if slices > 1 else [0.0])
    # Noise level of the acquisition, as a fraction of the body's 99th-percentile signal (which display scaling sets
    # to 1); each image then gets its own noise.
    sigma = rng.uniform(0.01, 0.05)
    images = []
    for slice_index, position in enumerate(positions):
        if sequence_class == "Cine":
            offset = rng.uniform(0.0, 1.0 / cine_frames)
            phases = [offset + frame / cine_frames for frame in range(cine_frames)]
        else:
            phases = [rng.uniform(0.6, 0.95)]  # ECG-triggered in mid-to-late diastole
        for frame, phase in enumerate(phases):
            # One acquisition: the same seed, hence the same subtype, protocol and coil shading, for every image.
            image = render_slice(anatomy, sequence_class, phase=phase, view=view, slice_position=float(position),
                                 rng=np.random.default_rng(state), kind=kind, noise=False, matrix=matrix)
            noise = np.random.default_rng([state, slice_index, frame]).standard_normal((2, *image.image.shape))
            image.image = np.hypot(image.image + sigma * noise[0], sigma * noise[1]).astype(np.float32)
            image.protocol["noise_sigma_fraction"] = float(sigma)
            image.slice_index, image.frame = slice_index, frame
            images.append(image)
    return images


def render_study(anatomy: HeartAnatomy, rng: np.random.Generator, slices: int = 2, cine_frames: int = 3
                 ) -> dict[str, list[CardiacImage]]:
    """One study: a series of every class in ``SEQUENCE_CLASSES`` order (``render_series``), keyed by class."""
    return {sequence_class: render_series(anatomy, sequence_class, rng, slices, cine_frames)
            for sequence_class in SEQUENCE_CLASSES}
