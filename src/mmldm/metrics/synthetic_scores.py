"""Scores of sounding videos of the synthetic dataset, from the detectors of
:mod:`mmldm.data.detect` (no learnt network involved).

For each sample the detectors give the ball's class (colour), the tone's class (pitch), the
wall-bounce times (video) and the click times (audio). Over a set of samples:

* ``video_class_accuracy`` / ``audio_class_accuracy``: detected class == the class the
  sample was conditioned on (or, for real data, its true class); only samples whose class is
  known count; absent when no class is known;
* ``av_class_agreement``: detected video class == detected audio class (and not -1);
* ``sync_precision``: the share of audio clicks with a video bounce within one frame
  (``1 / fps``, inclusive), ``sync_recall``: the share of video bounces with a click within
  one frame, ``sync_f1`` their harmonic mean. Events are matched one-to-one per sample
  (:func:`mmldm.data.detect.match_events`) and counts are summed over samples (micro average),
  so samples without events do not inflate the scores.

Reference values: the same scores of real data are the ceiling (the detectors are not perfect:
a bounce within about a frame of a clip's ends cannot be seen, while its click is heard), and
those of shuffled pairs are chance: audio of sample i with the video of sample p(i), labels
of sample i against the detections of sample p(i), p a seeded random permutation without
fixed points.

Where a sample's class comes from (:func:`label_from_path`): a sidecar ``<name>.json`` with
a ``class_index`` key (as :func:`mmldm.data.synthetic.synthesize_dataset` writes), else the
folder name ``<class>/<name>.mp4`` (``00_red``, ... as in :func:`class_table`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmldm.data.detect import (
    detect_audio_class,
    detect_bounces,
    detect_clicks,
    detect_video_class,
    match_events,
)
from mmldm.data.synthetic import MAX_CLASSES, class_table

log = logging.getLogger(__name__)

CLASS_SCORES = ("video_class_accuracy", "audio_class_accuracy")
PAIR_SCORES = ("av_class_agreement", "sync_precision", "sync_recall", "sync_f1")
SCORE_NAMES = CLASS_SCORES + PAIR_SCORES


@dataclass
class Detections:
    """What the detectors found in one sample (see :func:`detect_sample`)."""

    video_class: int  # -1: no object found
    audio_class: int  # -1: silence
    bounces: np.ndarray  # float64 [B] seconds
    clicks: np.ndarray  # float64 [C] seconds
    fps: float
    label: int | None = None  # the conditioned / true class, when known
    path: str | None = field(default=None, compare=False)


def detect_sample(
    frames,
    audio,
    *,
    fps: float,
    sample_rate: int,
    num_classes: int,
    label: int | None = None,
    path: str | None = None,
) -> Detections:
    """Run the detectors on one sample.

    Args:
        frames: ``[T, 3, H, W]`` float in [-1, 1], ``[T, H, W, 3]`` uint8, ... (any layout of
            :mod:`mmldm.data.detect`).
        audio: float ``[N]`` mono in [-1, 1] at ``sample_rate``.
        fps: frame rate of ``frames``; num_classes: K of the synthetic dataset.
        label: the class the sample was conditioned on / its true class, if known.
    """
    return Detections(
        video_class=detect_video_class(frames, num_classes),
        audio_class=detect_audio_class(audio, sample_rate, num_classes),
        bounces=detect_bounces(frames, fps),
        clicks=detect_clicks(audio, sample_rate),
        fps=float(fps),
        label=label,
        path=path,
    )


def _matched(clicks: np.ndarray, bounces: np.ndarray, tolerance: float) -> int:
    precision, recall = match_events(clicks, bounces, tolerance)
    if len(clicks):
        return int(round(precision * len(clicks)))
    return int(round(recall * len(bounces))) if len(bounces) else 0


def score_detections(
    detections: Sequence[Detections], pairing: Sequence[int] | None = None
) -> dict[str, float]:
    """The scores of the module docstring over a set of samples.

    Args:
        pairing: p; sample i's audio (and label) is compared with sample p[i]'s video (and
            detections, for the class accuracies). None: each sample with itself.

    Returns:
        {score name: value in [0, 1]}; class accuracies only when some label is known; no
        entry at all for an empty set.
    """
    n = len(detections)
    if n == 0:
        return {}
    p = np.arange(n) if pairing is None else np.asarray(pairing, dtype=int)
    out: dict[str, float] = {}
    labelled = [i for i in range(n) if detections[i].label is not None]
    if labelled:
        out["video_class_accuracy"] = float(
            np.mean([detections[p[i]].video_class == detections[i].label for i in labelled])
        )
        out["audio_class_accuracy"] = float(
            np.mean([detections[p[i]].audio_class == detections[i].label for i in labelled])
        )
    out["av_class_agreement"] = float(
        np.mean(
            [
                detections[i].audio_class != -1
                and detections[p[i]].video_class == detections[i].audio_class
                for i in range(n)
            ]
        )
    )
    matched = clicks = bounces = 0
    for i in range(n):
        audio, video = detections[i], detections[p[i]]
        tolerance = 1.0 / video.fps  # one frame
        matched += _matched(audio.clicks, video.bounces, tolerance)
        clicks += len(audio.clicks)
        bounces += len(video.bounces)
    precision = matched / clicks if clicks else 1.0
    recall = matched / bounces if bounces else 1.0
    out["sync_precision"] = precision
    out["sync_recall"] = recall
    out["sync_f1"] = (
        2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    )
    return out


def shuffled_pairing(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation p of 0..n-1 without fixed points (n >= 2): a random order of the
    samples, each paired with the next one in that order."""
    if n < 2:
        raise ValueError(f"shuffled pairs need at least 2 samples, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    p = np.empty(n, dtype=int)
    p[order] = np.roll(order, -1)
    return p


def synthetic_scores(detections: Sequence[Detections], seed: int = 0) -> dict[str, dict]:
    """``{"value": scores of the samples, "shuffled": scores of shuffled pairs (chance)}``;
    "shuffled" is empty with fewer than 2 samples."""
    n = len(detections)
    return {
        "value": score_detections(detections),
        "shuffled": score_detections(detections, shuffled_pairing(n, seed)) if n >= 2 else {},
    }


# --------------------------------------------------------------------------------------------
# Classes from file layout
# --------------------------------------------------------------------------------------------


def read_sidecar(path: str | Path) -> dict | None:
    """The JSON sidecar ``<name>.json`` of a video, or None (missing or unreadable)."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("%s: unreadable sidecar (%s); ignored", sidecar, err)
        return None
    return data if isinstance(data, dict) else None


def class_from_folder(name: str, num_classes: int) -> int | None:
    """Class index of a folder named like :func:`class_table`'s ``NN_colour`` (or ``NN``)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        return None
    names = [entry["name"] for entry in class_table(num_classes)]
    if name in names:
        return names.index(name)
    match = re.fullmatch(r"(\d+)(?:_.*)?", name)
    if match and int(match.group(1)) < num_classes:
        return int(match.group(1))
    return None


def label_from_path(path: str | Path, num_classes: int) -> int | None:
    """The class of a video: its sidecar's ``class_index``, else its folder name; None when
    neither says (or the index is outside 0..num_classes-1)."""
    sidecar = read_sidecar(path)
    if sidecar is not None and isinstance(sidecar.get("class_index"), int):
        index = sidecar["class_index"]
        if 0 <= index < num_classes:
            return index
        log.warning("%s: class_index %d outside 0..%d; ignored", path, index, num_classes - 1)
    return class_from_folder(Path(path).parent.name, num_classes)


def synthetic_num_classes(paths: Sequence[str | Path], num_classes: int = 0) -> int | None:
    """K when the videos look like ``mmldm synth-data`` output, else None.

    They do when a sidecar holds the synthetic ground truth (``class_index``, ``num_classes``
    and ``bounces``) or when every video sits in a folder named after a class of
    :func:`class_table` (K = ``num_classes`` from the config; with 0, the sidecars' value).
    """
    for path in paths:
        sidecar = read_sidecar(path)
        if sidecar and {"class_index", "num_classes", "bounces"} <= set(sidecar):
            k = int(sidecar["num_classes"])
            return k if 1 <= k <= MAX_CLASSES else None
    if not paths or not 1 <= num_classes <= MAX_CLASSES:
        return None
    names = {entry["name"] for entry in class_table(num_classes)}
    if all(Path(p).parent.name in names for p in paths):
        return num_classes
    return None
