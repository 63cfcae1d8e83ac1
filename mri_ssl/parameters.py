"""Check a bundle's numeric parameters before any data are loaded: one line per problem, naming the parameter.

``python -m monai.bundle run --learning_rate nan`` passes the text ``"nan"`` (the command line parses only what
looks like a Python literal), ``--num_epochs 0`` divides by zero inside a learning-rate lambda, and a crop that is not
a multiple of the encoder's downsampling factor fails at the first iteration, after the whole dataset was cached.
Each training config's first ``initialize`` step calls ``check_bundle_parameters`` with the parameters a user may
set, so these fail at once, before any data are read or written, with one line (and exit status 2), e.g.::

    InputError: learning_rate: got 'nan' (text), needs a finite number > 0

The rule of each parameter is looked up by its name in ``RULES``; sizes may also have to be multiples of a factor the
network defines (``multiple_of``).
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mri_ssl.errors import InputError


@dataclass(frozen=True)
class Rule:
    """What a parameter must be: ``kind`` ``int``, ``float`` or ``size`` (an int or a list of ints, one per spatial
    axis), between ``low`` and ``high`` (``*_open``: the bound itself is excluded), or None if ``optional``."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def requirement(self) -> str:
        noun = {"int": "a whole number", "float": "a finite number",
                "size": "a whole number or a list of whole numbers"}[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = noun + (" " + " and ".join(bounds) if bounds else "")
        if self.kind == "size" and bounds:
            text = noun + ", each " + " and ".join(bounds)
        return text + (", or null" if self.optional else "")


COUNT = Rule("int", low=1)
NON_NEGATIVE_COUNT = Rule("int", low=0)
OPTIONAL_COUNT = Rule("int", low=1, optional=True)
POSITIVE = Rule("float", low=0, low_open=True)
NON_NEGATIVE = Rule("float", low=0)
FRACTION = Rule("float", low=0, high=1, low_open=True)          # a share of the data: (0, 1]
PROBABILITY = Rule("float", low=0, high=1)                      # [0, 1]
DROPOUT = Rule("float", low=0, high=1, high_open=True)          # [0, 1)
SIZE = Rule("size", low=1)

RULES: dict[str, Rule] = {
    **{name: COUNT for name in (
        "batch_size", "pretrain_batch_size", "classifier_batch_size", "num_epochs", "pretrain_epochs", "max_epochs",
        "val_interval",
        "sw_batch_size", "num_frames", "max_length", "embed_dim", "hidden_size", "mlp_dim", "num_layers",
        "num_heads", "projection_dim", "projection_hidden", "predictor_hidden", "temporal_layers", "temporal_heads",
        "text_width", "text_layers", "text_heads", "demo_subjects", "demo_studies", "demo_images", "demo_size",
        "demo_slices", "demo_cine_frames", "demo_lge_slices", "demo_test_images", "demo_validation_images",
        "probe_lesion_free_crops")},
    **{name: COUNT for name in ("probe_crops_per_subject", "probe_groups")},
    **{name: NON_NEGATIVE_COUNT for name in (
        "num_workers", "pretrain_warmup_epochs", "demo_validation_subjects", "demo_test_subjects", "seed",
        "demo_seed")},
    **{name: OPTIONAL_COUNT for name in ("epoch_length", "probe_max_fit_images", "crop_centres_per_class")},
    **{name: POSITIVE for name in (
        "learning_rate", "base_learning_rate", "classifier_learning_rate", "stage1_learning_rate",
        "encoder_learning_rate", "temperature",
        "grad_clip_norm", "noise_sigma", "demo_resolution_mm")},
    **{name: NON_NEGATIVE for name in ("weight_decay", "pretrain_weight_decay", "momentum", "reconstruction_weight",
                                       "attention_weight", "pointing_tolerance_px")},
    **{name: FRACTION for name in ("label_fraction", "data_fraction")},
    **{name: PROBABILITY for name in ("cache_rate", "cam_threshold", "cam_grayscale_prob")},
    "sw_overlap": Rule("float", low=0, high=1, high_open=True),
    "dropout": DROPOUT,
    # mri_ssl.physics.contrast: the smallest tissue signal gap relative to the brightest tissue; 1/2 is unreachable.
    **{name: Rule("float", low=0, high=0.5, high_open=True)
       for name in ("min_tissue_contrast", "simulation_min_tissue_contrast")},
    **{name: SIZE for name in ("crop_size", "patch_size", "sw_roi_size", "image_size", "features", "decoder_features",
                               "heatmap_features", "cnn_features", "reconstruction_channels")},
}


def _number(value: Any, integer: bool) -> float | int | None:
    """``value`` as a number of the wanted kind, or None if it is not one (text, a bool, a float for an int)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if integer and not isinstance(value, numbers.Integral):
        return None
    return value


def _within(value: float, rule: Rule) -> bool:
    if not math.isfinite(value):
        return False
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        return False
    if rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high):
        return False
    return True


def _shown(value: Any) -> str:
    return f"{value!r} (text)" if isinstance(value, str) else repr(value)


def parameter_problem(name: str, value: Any, rule: Rule) -> str | None:
    """Why ``value`` breaks ``rule`` (what it needs), or None if it does not."""
    if value is None:
        return None if rule.optional else f"got null, needs {rule.requirement()}"
    items = list(value) if rule.kind == "size" and isinstance(value, (list, tuple)) else [value]
    if rule.kind == "size" and not items:
        return f"got an empty list, needs {rule.requirement()}"
    for item in items:
        number = _number(item, integer=rule.kind in ("int", "size"))
        if number is None or not _within(float(number), rule):
            return f"got {_shown(value)}, needs {rule.requirement()}"
    return None


def check_bundle_parameters(values: Mapping[str, Any], multiple_of: Mapping[str, int | Sequence] | None = None,
                            exit_on_error: bool = False) -> None:
    """Raise an ``InputError`` naming the first parameter in ``values`` that breaks its rule in ``RULES``.

    Args:
        values: parameter name -> value, as the bundle config resolved it (command-line overrides included).
        multiple_of: size parameter -> the factor each of its sides must be a multiple of, or (factor, why), e.g.
            ``{"crop_size": (16, "the encoder's downsampling factor")}``.
        exit_on_error: print the error as one line on stderr and exit with status 2 instead (what the bundle
            configs use: MONAI would otherwise bury the line in a traceback of its config resolver).

    A name without a rule is a mistake in the calling config, raised as ``KeyError``.
    """
    try:
        _check(values, multiple_of)
    except InputError as error:
        _raise_or_exit(error, exit_on_error)


def _raise_or_exit(error: InputError, exit_on_error: bool) -> None:
    if not exit_on_error:
        raise error
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def _check(values: Mapping[str, Any], multiple_of: Mapping[str, int | Sequence] | None) -> None:
    for name, value in values.items():
        if name not in RULES:
            raise KeyError(f"no rule for bundle parameter {name!r}; add one to mri_ssl.parameters.RULES")
        problem = parameter_problem(name, value, RULES[name])
        if problem:
            raise InputError(name, problem)
    for name, factor in (multiple_of or {}).items():
        factor, why = (factor, "") if isinstance(factor, numbers.Integral) else (factor[0], f" ({factor[1]})")
        sides = values[name] if isinstance(values[name], (list, tuple)) else [values[name]]
        if any(side % int(factor) for side in sides):
            raise InputError(name, f"got {values[name]!r}, needs each side a multiple of {factor}{why}")


def as_flag(value: Any, name: str = "flag") -> bool:
    """A bundle switch as a bool: ``python -m monai.bundle run --resume true`` passes the string "true"."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InputError(name, f"expected true or false, got {value!r}")


def check_batch_norm_batch(crops_per_step: int, batch_norm: Any, name: str = "batch_size",
                           switch: str = "projection_batch_norm", exit_on_error: bool = False) -> None:
    """Raise an ``InputError`` if a training step's batch norm would see fewer than 2 samples.

    Batch norm over one sample is undefined (torch raises mid-run, after data loading); this says so at start and
    names the way out. ``crops_per_step``: the samples one training step normalises over (per process).
    ``exit_on_error`` as in ``check_bundle_parameters``.
    """
    if as_flag(batch_norm, switch) and int(crops_per_step) < 2:
        _raise_or_exit(InputError(name, f"one training step holds {int(crops_per_step)} crop(s), but {switch} is "
                                        f"true and batch norm needs at least 2; raise {name} or set {switch} false"),
                       exit_on_error)
