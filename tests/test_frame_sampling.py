"""Segment-based frame sampling: exact indices in eval mode, per-segment ranges in train mode, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri_ssl.errors import InputError
from mri_ssl.transforms.frames import ALLOWED_NUM_FRAMES, SampleFrames, SampleFramesd, segment_frame_indices


def test_eval_takes_the_middle_frame_of_each_segment():
    # 30 frames in 4 segments of 7.5 frames: middles at 3.75, 11.25, 18.75, 26.25
    assert segment_frame_indices(30, 4, "eval").tolist() == [3, 11, 18, 26]
    assert segment_frame_indices(32, 8, "eval").tolist() == [2, 6, 10, 14, 18, 22, 26, 30]
    assert segment_frame_indices(25, 1, "eval").tolist() == [12]
    assert segment_frame_indices(64, 64, "eval").tolist() == list(range(64))


def test_short_studies_are_padded_by_repeating_frames_in_order():
    assert segment_frame_indices(3, 8, "eval").tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    idx = segment_frame_indices(5, 64, "eval")
    assert len(idx) == 64 and np.all(np.diff(idx) >= 0)
    counts = np.bincount(idx, minlength=5)
    assert set(counts.tolist()) <= {64 // 5, 64 // 5 + 1} and counts.sum() == 64
    assert segment_frame_indices(1, 16, "train", np.random.RandomState(0)).tolist() == [0] * 16


@pytest.mark.parametrize("num_total", [1, 7, 25, 30, 100])
@pytest.mark.parametrize("num_frames", ALLOWED_NUM_FRAMES)
def test_train_indices_fall_in_their_segment(num_total, num_frames):
    rng = np.random.RandomState(num_total * 100 + num_frames)
    for _ in range(20):
        idx = segment_frame_indices(num_total, num_frames, "train", rng)
        k = np.arange(num_frames)
        low = np.floor(k * num_total / num_frames)
        high = np.ceil((k + 1) * num_total / num_frames) - 1
        assert len(idx) == num_frames
        assert np.all(idx >= low) and np.all(idx <= np.maximum(high, low)) and np.all(idx <= num_total - 1)


def test_train_mode_varies_and_covers_each_segment():
    rng = np.random.RandomState(0)
    seen = np.array([segment_frame_indices(40, 4, "train", rng) for _ in range(400)])
    for k in range(4):  # each 10-frame segment: all its frames get drawn, roughly uniformly
        values, counts = np.unique(seen[:, k], return_counts=True)
        assert values.tolist() == list(range(10 * k, 10 * k + 10))
        assert counts.min() > 15
    # seeded: reproducible
    a = segment_frame_indices(40, 8, "train", np.random.RandomState(3))
    b = segment_frame_indices(40, 8, "train", np.random.RandomState(3))
    assert a.tolist() == b.tolist()


def test_transform_on_tensor_and_dict_shares_indices():
    video = torch.arange(20).float().view(1, 20, 1, 1).expand(2, 20, 3, 3)  # (C, T, H, W), value = frame index
    out = SampleFrames(4, "eval")(video)
    assert out.shape == (2, 4, 3, 3)
    assert out[0, :, 0, 0].tolist() == [2.0, 7.0, 12.0, 17.0]
    sampler = SampleFramesd(["video", "mask"], num_frames=8, mode="train").set_random_state(0)
    d = sampler({"video": video, "mask": video.numpy().copy()})
    assert d["video"].shape == (2, 8, 3, 3) and d["mask"].shape == (2, 8, 3, 3)
    np.testing.assert_array_equal(d["video"].numpy(), d["mask"])


@pytest.mark.parametrize("kwargs,name", [({"num_frames": 5}, "num_frames"), ({"mode": "test"}, "mode")])
def test_bad_settings_are_named(kwargs, name):
    with pytest.raises(InputError) as caught:
        SampleFrames(**kwargs)
    assert caught.value.source == name


def test_empty_study_and_missing_rng():
    with pytest.raises(InputError, match="num_total"):
        segment_frame_indices(0, 4)
    with pytest.raises(InputError, match="rng"):
        segment_frame_indices(10, 4, "train")
