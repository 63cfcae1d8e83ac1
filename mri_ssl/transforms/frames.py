"""Segment-based frame sampling of a CMR study seen as a video (TSN / CLIP4Clip style, as CMRformer does).

A study of T frames is split into ``num_frames`` = K equal segments, segment k covering the (fractional) frame
interval [k T / K, (k + 1) T / K). One frame is taken per segment:

    training   (mode="train"): index_k = floor((k + u_k) T / K),  u_k ~ U[0, 1) independently per segment,
    evaluation (mode="eval"):  index_k = floor((k + 0.5) T / K), the middle of the segment (deterministic).

Indices are therefore increasing (non-decreasing), always inside [0, T - 1], and cover the whole cycle.

Short studies (T < K) are padded by *repeating frames in time order*: the same formula then lands several
segments on the same frame, so every frame is used floor(K/T) or ceil(K/T) times, in order (e.g. T = 3, K = 8 in
eval mode gives 0 0 0 1 1 2 2 2). No blank frames and no mask are needed, and the sequence keeps its time order;
this is also how the paper duplicates single LGE long-axis images to match the short-axis stack.

``num_frames`` must be one of {1, 4, 8, 16, 32, 64}, the settings the issue (and the paper's ablation) use.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from mri_ssl.errors import InputError

ALLOWED_NUM_FRAMES = (1, 4, 8, 16, 32, 64)
FRAME_SAMPLING_MODES = ("train", "eval")


def segment_frame_indices(num_total: int, num_frames: int, mode: str = "eval",
                          rng: np.random.RandomState | None = None) -> np.ndarray:
    """The K frame indices to take from a study of ``num_total`` frames (see the module docstring).

    Args:
        num_total: T >= 1, frames in the study.
        num_frames: K, one of ``ALLOWED_NUM_FRAMES``.
        mode: "train" (random frame per segment, needs ``rng``) or "eval" (middle frame per segment).
        rng: numpy RandomState for training mode.

    Returns:
        (K,) int64 array of non-decreasing indices in [0, T - 1].
    """
    _check_settings(num_frames, mode)
    if not isinstance(num_total, (int, np.integer)) or num_total < 1:
        raise InputError("num_total", f"a study needs at least one frame, got {num_total!r}")
    if mode == "train":
        if rng is None:
            raise InputError("rng", "training-mode frame sampling needs a random state (set_random_state)")
        offsets = rng.uniform(0.0, 1.0, size=num_frames)
    else:
        offsets = np.full(num_frames, 0.5)
    positions = (np.arange(num_frames) + offsets) * (num_total / num_frames)
    # min() guards the rare float round-up of (K - 1 + u) T / K to T when u is just below 1.
    return np.minimum(np.floor(positions).astype(np.int64), num_total - 1)


class SampleFrames(Randomizable, Transform):
    """Take ``num_frames`` frames along ``time_dim`` of an array or tensor by segment sampling.

    Args:
        num_frames: K, one of {1, 4, 8, 16, 32, 64}.
        mode: "train" (random frame per segment) or "eval" (middle frame per segment).
        time_dim: the time (frame) axis; 1 for channel-first (C, T, H, W) videos.
    """

    def __init__(self, num_frames: int = 8, mode: str = "train", time_dim: int = 1):
        _check_settings(num_frames, mode)
        self.num_frames, self.mode, self.time_dim = num_frames, mode, time_dim
        self._indices: np.ndarray | None = None

    def randomize(self, num_total: int) -> None:
        self._indices = segment_frame_indices(num_total, self.num_frames, self.mode, self.R)

    def __call__(self, video, randomize: bool = True):
        if video.ndim <= self.time_dim:
            raise InputError("video", f"expected a frame axis at dim {self.time_dim}, got shape {tuple(video.shape)}")
        if randomize or self._indices is None:
            self.randomize(int(video.shape[self.time_dim]))
        if isinstance(video, torch.Tensor):
            return torch.index_select(video, self.time_dim, torch.as_tensor(self._indices, device=video.device))
        return np.take(np.asarray(video), self._indices, axis=self.time_dim)

    @property
    def last_indices(self) -> np.ndarray | None:
        """The frame indices of the last call (for logging which frames a model saw)."""
        return self._indices


class SampleFramesd(Randomizable, MapTransform):
    """Dictionary wrapper of :class:`SampleFrames`; all ``keys`` get the same frame indices (e.g. video + mask)."""

    def __init__(self, keys: KeysCollection, num_frames: int = 8, mode: str = "train", time_dim: int = 1,
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.sampler = SampleFrames(num_frames, mode, time_dim)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        self.sampler.randomize(int(data))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            d[key] = self.sampler(d[key], randomize=first)
            first = False
        return d


def _check_settings(num_frames: int, mode: str) -> None:
    if num_frames not in ALLOWED_NUM_FRAMES:
        raise InputError("num_frames", f"expected one of {ALLOWED_NUM_FRAMES}, got {num_frames!r}")
    if mode not in FRAME_SAMPLING_MODES:
        raise InputError("mode", f"expected one of {FRAME_SAMPLING_MODES}, got {mode!r}")


__all__: Sequence[str] = ["ALLOWED_NUM_FRAMES", "SampleFrames", "SampleFramesd", "segment_frame_indices"]
