"""Temporal scores of the synthetic benchmark against closed-form cases: positions of
reconstructions, events kept, audio-visual timing inside the visible window, paths."""

from __future__ import annotations

import numpy as np
import pytest

from mmldm.synthetic.detect import visible_window
from mmldm.synthetic.scores import (
    Detections,
    event_counts,
    f1_from_counts,
    path_consistency,
    reconstruction_scores,
    score_detections,
    shuffled_pairing,
)

FPS = 8.0


def _det(positions, video_events=(), audio_events=(), label=None, step=5.0, family="ball"):
    return Detections(
        0 if label is None else label,
        0 if label is None else label,
        np.asarray(video_events, float),
        np.asarray(audio_events, float),
        FPS,
        label,
        positions=np.asarray(positions, float),
        family=family,
        max_step=step,
    )


def _line(n=8, start=(4.0, 4.0), step=(2.0, 1.0)):
    return np.asarray(start) + np.arange(n)[:, None] * np.asarray(step)


def test_event_counts_ignore_what_only_one_side_can_show():
    window = visible_window(8, FPS)  # ball: a bounce needs a frame on each side
    assert window == (1 / 8, 6 / 8)
    # a click at 0.05 s (before frame 1: heard, cannot be seen) does not count against the video
    assert event_counts(np.array([0.05, 0.4]), np.array([0.41]), 0.125, window) == (1, 1, 1)
    # without the window it would
    assert event_counts(np.array([0.05, 0.4]), np.array([0.41]), 0.125) == (1, 2, 1)
    # a matched pair counts if either end is inside; unmatched inside events count
    assert event_counts(np.array([0.12, 0.5]), np.array([0.13]), 0.125, window) == (1, 2, 1)
    assert f1_from_counts(1, 2, 1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert f1_from_counts(0, 0, 0) == (1.0, 1.0, 1.0)
    assert visible_window(8, FPS, "pulse") == (0.0, 7 / 8)


def test_path_consistency_counts_plausible_steps():
    line = _line()  # steps of sqrt(5) = 2.24 px
    assert path_consistency(line, max_step=1.0) == (7, 7)  # 2.24 <= 1 + 2
    assert path_consistency(line, max_step=0.1) == (0, 7)
    jumpy = line.copy()
    jumpy[3] += 20.0  # one frame far away: the steps into and out of it are jumps
    assert path_consistency(jumpy, max_step=1.0) == (5, 7)
    missing = line.copy()
    missing[5] = np.nan  # no object: both steps count as jumps
    assert path_consistency(missing, max_step=1.0) == (5, 7)


def test_score_detections_sync_and_path_with_chance():
    dets = [
        _det(_line(), video_events=[0.4], audio_events=[0.41, 0.05], label=0),
        _det(_line(start=(20, 4)), video_events=[0.25], audio_events=[0.3], label=1),
    ]
    scores = score_detections(dets)
    assert scores["sync_f1"] == 1.0  # the 0.05 s click is outside the visible window
    assert scores["path_consistency"] == 1.0
    assert scores["video_class_accuracy"] == 1.0
    swapped = score_detections(dets, pairing=[1, 0], seed=0)
    # 0.3 vs 0.4 is within one frame (0.125 s): matched by chance; 0.41 vs 0.25 is not
    assert swapped["sync_f1"] == 0.5
    assert swapped["video_class_accuracy"] == 0.0
    # frames in a random order: a straight line of 8 px steps becomes jumps
    fast = [_det(_line(step=(3.0, 0.0)), step=3.0)]
    assert score_detections(fast)["path_consistency"] == 1.0
    assert score_detections(fast, pairing=[0], seed=1)["path_consistency"] < 1.0


def test_reconstruction_scores_closed_form():
    source = _det(_line(), video_events=[0.3], audio_events=[0.3, 0.6], label=2)
    shifted = _line() + np.array([1.0, 1.0])  # 1.41 px off in every frame
    far = shifted.copy()
    far[[1, 3]] += 5.0  # two frames between the key frames 0, 2, 5, 7 are far off
    recon = _det(far, video_events=[0.35], audio_events=[0.31], label=None)
    recon.video_class, recon.audio_class = 2, 1
    keys = [0, 2, 5, 7]
    scores = reconstruction_scores([recon], [source], keys)
    assert scores["position_within_2px_key"] == 1.0
    assert scores["position_within_2px_between"] == pytest.approx(2 / 4)
    assert scores["position_within_2px"] == pytest.approx(6 / 8)
    expected = (6 * np.sqrt(2) + 2 * np.hypot(6, 6)) / 8
    assert scores["position_error_px"] == pytest.approx(expected)
    assert scores["video_event_f1"] == 1.0  # 0.35 vs 0.3: within a frame
    assert scores["audio_event_f1"] == pytest.approx(f1_from_counts(1, 1, 2)[2])
    assert scores["video_class_accuracy"] == 1.0 and scores["audio_class_accuracy"] == 0.0
    # a frame where the source shows the object and the reconstruction does not is a miss
    lost = far.copy()
    lost[0] = np.nan
    lost_scores = reconstruction_scores([_det(lost)], [source], keys)
    assert lost_scores["position_within_2px_key"] == pytest.approx(3 / 4)
    # all frames key frames: no "between" part
    assert "position_within_2px_between" not in reconstruction_scores(
        [recon], [source], list(range(8))
    )


def test_reconstruction_chance_pairs_other_sources():
    rng = np.random.default_rng(0)
    sources = [_det(rng.uniform(4, 28, size=(8, 2))) for _ in range(6)]
    own = reconstruction_scores(sources, sources, [0, 7])
    other = reconstruction_scores(sources, sources, [0, 7], shuffled_pairing(6))
    assert own["position_within_2px"] == 1.0 and own["position_error_px"] == 0.0
    assert other["position_within_2px"] < 0.2
