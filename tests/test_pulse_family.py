"""The second synthetic family (``pulse``): its ground truth, and the detectors recovering it
from written-and-decoded mp4 files (H.264 + AAC), as the evaluation reads generated samples."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmldm.cli import main
from mmldm.config import load_config
from mmldm.data.media import read_media
from mmldm.synthetic.detect import (
    detect_audio_class,
    detect_audio_events,
    detect_object_sizes,
    detect_onsets,
    detect_positions,
    detect_swells,
    detect_video_class,
    detect_video_events,
    match_events,
)
from mmldm.synthetic.families import class_table, clip_rng, max_step, synthesize_clip
from mmldm.synthetic.pulse import SWELL, half_side

DEMO = load_config("demo").data  # K=4, 8 frames at 8 fps, 32x32, 16 kHz


def test_pulse_clips_follow_their_ground_truth():
    table = class_table(4, "pulse")
    assert [c["colour"] for c in table] == ["orange", "azure", "chartreuse", "rose"]
    ball = class_table(4, "ball")
    assert not {c["hue"] for c in table} & {c["hue"] for c in ball}  # other colours
    assert not {c["base_pitch_hz"] for c in table} & {c["base_pitch_hz"] for c in ball}
    for i in range(12):
        clip = synthesize_clip(clip_rng(5, i), i % 4, DEMO, 2.0, "pulse")
        truth = clip.ground_truth()
        assert truth["family"] == "pulse" and clip.class_name == table[i % 4]["name"]
        orbit = truth["orbit"]
        # on the orbit, at its angular speed
        offset = clip.positions - np.asarray(orbit["centre"])
        np.testing.assert_allclose(np.linalg.norm(offset, axis=1), orbit["radius"])
        angles = np.unwrap(np.arctan2(offset[:, 1], offset[:, 0]))
        np.testing.assert_allclose(np.diff(angles) * DEMO.fps, orbit["radians_per_second"])
        steps = np.linalg.norm(np.diff(clip.positions, axis=0), axis=1)
        assert steps.max() <= max_step(DEMO, "pulse") + 1e-9
        # swells: the side jumps at the first frame after each event
        halves = np.asarray(truth["half_sides"])
        assert halves.min() >= half_side(32) - 1e-9
        for t in clip.event_times:
            k = int(np.floor(t * DEMO.fps)) + 1
            if k < len(halves):
                assert halves[k] > halves[k - 1] * 1.2
                assert halves[k] <= half_side(32) * (1 + SWELL) * 1.1
        # the object is drawn where the ground truth says, in the class colour
        np.testing.assert_allclose(detect_positions(clip.frames), clip.positions, atol=0.3)
        assert detect_video_class(clip.frames, 4, "pulse") == i % 4
        # a note starts at every event: loud within 20 ms, quiet just before
        for t in clip.event_times:
            start = int(round(t * DEMO.sample_rate))
            before = clip.audio[max(0, start - 160) : start]
            after = clip.audio[start + 16 : start + 320]
            assert np.abs(after).max() > 3 * np.abs(before).max()
        assert detect_audio_class(clip.audio, DEMO.sample_rate, 4, "pulse") == i % 4


@pytest.fixture(scope="module")
def pulse_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("pulse")
    argv = ["synth-data", "--out", str(out), "--num-clips", "16", "--seed", "2"]
    assert main([*argv, "--config", "demo", "--family", "pulse", "-q"]) == 0
    records = []
    for path in sorted(out.glob("*/*.mp4")):
        truth = json.loads(path.with_suffix(".json").read_text())
        records.append((truth, read_media(path, sample_rate=DEMO.sample_rate, duration=2.0)))
    return records


def test_detectors_recover_the_pulse_family_from_mp4(pulse_files):
    names = {c["name"] for c in class_table(4, "pulse")}
    found_v, true_v, found_a, true_a = [], [], [], []
    for truth, media in pulse_files:
        assert truth["class_name"] in names
        k = truth["class_index"]
        assert detect_video_class(media.frames, 4, "pulse") == k
        assert detect_audio_class(media.audio, DEMO.sample_rate, 4, "pulse") == k
        error = np.abs(detect_positions(media.frames) - np.asarray(truth["trajectory"]))
        assert error.max() < 0.75
        events = np.asarray(truth["events"])
        seen = events[events <= (truth["num_frames"] - 1) / truth["fps"]]  # a swell needs a
        video = detect_video_events(media.frames, truth["fps"], "pulse")  # frame after it
        audio = detect_audio_events(media.audio, DEMO.sample_rate, "pulse")
        found_v.append(match_events(video, seen, 0.5 / truth["fps"]) + (len(video), len(seen)))
        found_a.append(match_events(audio, events, 0.01) + (len(audio), len(events)))
        true_v.append(len(seen))
        true_a.append(len(events))
    for found in (found_v, found_a):
        n_pred = sum(f[2] for f in found)
        n_true = sum(f[3] for f in found)
        precision = sum(f[0] * f[2] for f in found) / n_pred
        recall = sum(f[1] * f[3] for f in found) / n_true
        assert precision >= 0.95 and recall >= 0.95 and n_true >= 40, (precision, recall)


def test_pulse_detectors_on_closed_form_signals():
    # sizes: a square of side 5 then 9 px on grey; the swell is between frames 1 and 2
    frames = np.full((4, 32, 32, 3), 96, np.uint8)
    for t, side in enumerate([5, 5, 9, 7]):
        frames[t, 10 : 10 + side, 10 : 10 + side] = (255, 128, 0)
    sizes = detect_object_sizes(frames)
    assert sizes[2] > 1.5 * sizes[1] and sizes[3] < sizes[2]
    np.testing.assert_allclose(detect_swells(frames, 8.0), [1.5 / 8.0])
    # onsets: a steady tone with two louder notes at 0.25 s and 0.6 s
    rate = 16000
    t = np.arange(rate) / rate
    envelope = 0.05 + sum(np.where(t >= e, 0.5 * np.exp(-(t - e) / 0.1), 0) for e in (0.25, 0.6))
    wave = envelope * np.sin(2 * np.pi * 420 * t)
    np.testing.assert_allclose(detect_onsets(wave, rate), [0.25, 0.6], atol=0.004)
    assert detect_onsets(0.05 * np.sin(2 * np.pi * 420 * t), rate).size == 0
    assert detect_swells(np.full((4, 32, 32, 3), 96, np.uint8), 8.0).size == 0
