"""Scores of sounding videos of the synthetic families, from the detectors of
:mod:`mmldm.synthetic.detect` (no learnt network involved).

For each sample the detectors give the object's class (colour), the tone's class (pitch), the
object's centre in every frame, and the family's events as seen (ball: wall bounces; pulse:
swells) and as heard (ball: clicks; pulse: note onsets). Over a set of samples:

* ``video_class_accuracy`` / ``audio_class_accuracy``: detected class == the class the
  sample was conditioned on (or, for real data, its true class); only samples whose class is
  known count; absent when no class is known;
* ``av_class_agreement``: detected video class == detected audio class (and not -1);
* ``sync_precision``: the share of heard events with a seen event within one frame
  (``1 / fps``, inclusive), ``sync_recall``: the share of seen events with a heard one within
  one frame, ``sync_f1`` their harmonic mean. Events are matched one-to-one per sample
  (:func:`mmldm.synthetic.detect.match_pairs`) and counts are summed over samples (micro average),
  so samples without events do not inflate the scores. An unmatched event counts only inside
  the family's visible window (:func:`mmldm.synthetic.detect.visible_window`): a bounce in the
  first or last frame interval is heard but cannot be seen, in real data too;
* ``path_consistency``: the share of frame-to-frame steps of the object's centre no longer
  than the family's fastest motion + 2 px (:func:`mmldm.synthetic.families.max_step`): 1 for
  objects that move along a path, low for ones that jump to unrelated places.

Reference values: the same scores of real data are the ceiling, and those of shuffled pairs
are chance: audio of sample i with the video of sample p(i), labels of sample i against the
detections of sample p(i), p a seeded random permutation without fixed points; for
``path_consistency``, each sample's frames in a seeded random order. For a2v and v2a outputs
(the given modality kept in the file), ``sync_f1`` says how well the output follows its own
condition and the shuffled ``sync_f1`` how well it follows another clip's.

Reconstructions are scored against their sources (:func:`reconstruction_scores`): the share
of frames whose object centre is within 2 px of the source's, for the encoder's key frames and
the frames between them apart, and how well the events of each modality are kept.

Where a sample's class comes from (:func:`label_from_path`): a sidecar ``<name>.json`` with
a ``class_index`` key (as :func:`mmldm.synthetic.families.synthesize_dataset` writes), else the
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

from mmldm.synthetic.classes import FAMILIES, class_table, max_classes
from mmldm.synthetic.detect import (
    detect_audio_class,
    detect_audio_events,
    detect_positions,
    detect_video_class,
    detect_video_events,
    match_pairs,
    visible_window,
)

log = logging.getLogger(__name__)

CLASS_SCORES = ("video_class_accuracy", "audio_class_accuracy")
PAIR_SCORES = ("av_class_agreement", "sync_precision", "sync_recall", "sync_f1")
TEMPORAL_SCORES = ("path_consistency",)
SCORE_NAMES = CLASS_SCORES + PAIR_SCORES + TEMPORAL_SCORES
RECONSTRUCTION_SCORES = (
    "position_within_2px",
    "position_within_2px_key",
    "position_within_2px_between",
    "position_error_px",
    "video_event_f1",
    "audio_event_f1",
)
POSITION_TOLERANCE = 2.0  # px
STEP_MARGIN = 2.0  # px over the family's fastest motion that still counts as a path


@dataclass
class Detections:
    """What the detectors found in one sample (see :func:`detect_sample`)."""

    video_class: int  # -1: no object found
    audio_class: int  # -1: silence
    video_events: np.ndarray  # float64 [E] seconds (ball: bounces)
    audio_events: np.ndarray  # float64 [E] seconds (ball: clicks)
    fps: float
    label: int | None = None  # the conditioned / true class, when known
    path: str | None = field(default=None, compare=False)
    positions: np.ndarray | None = field(default=None, compare=False)  # [T, 2] px, NaN: none
    family: str = "ball"
    max_step: float | None = None  # px between frames, by design (None: no path score)

    @property
    def window(self) -> tuple[float, float]:
        """Where events can be both seen and heard (the whole line without positions)."""
        if self.positions is None:
            return -np.inf, np.inf
        return visible_window(len(self.positions), self.fps, self.family)


def detect_sample(
    frames,
    audio,
    *,
    fps: float,
    sample_rate: int,
    num_classes: int,
    label: int | None = None,
    path: str | None = None,
    family: str = "ball",
    max_step: float | None = None,
) -> Detections:
    """Run the detectors on one sample.

    Args:
        frames: ``[T, 3, H, W]`` float in [-1, 1], ``[T, H, W, 3]`` uint8, ... (any layout of
            :mod:`mmldm.synthetic.detect`).
        audio: float ``[N]`` mono in [-1, 1] at ``sample_rate``.
        fps: frame rate of ``frames``; num_classes: K of the synthetic family ``family``.
        label: the class the sample was conditioned on / its true class, if known.
        max_step: the family's fastest motion in px per frame, for ``path_consistency``.
    """
    positions = detect_positions(frames)
    return Detections(
        video_class=detect_video_class(frames, num_classes, family),
        audio_class=detect_audio_class(audio, sample_rate, num_classes, family),
        video_events=detect_video_events(frames, fps, family, positions),
        audio_events=detect_audio_events(audio, sample_rate, family),
        fps=float(fps),
        label=label,
        path=path,
        positions=positions,
        family=family,
        max_step=max_step,
    )


def event_counts(
    predicted: np.ndarray,
    reference: np.ndarray,
    tolerance: float,
    window: tuple[float, float] = (-np.inf, np.inf),
) -> tuple[int, int, int]:
    """(matched, predicted, reference) event counts of one sample.

    Events are matched one-to-one within ``tolerance``; a matched pair counts when either of
    its events lies inside ``window`` (seconds, inclusive), an unmatched event only when it
    lies inside.
    """
    pairs = match_pairs(predicted, reference, tolerance)
    lo, hi = window

    def inside(t: float) -> bool:
        return lo <= t <= hi

    matched = sum(inside(predicted[i]) or inside(reference[j]) for i, j in pairs)
    used_p, used_r = {i for i, _ in pairs}, {j for _, j in pairs}
    n_pred = matched + sum(inside(t) for i, t in enumerate(predicted) if i not in used_p)
    n_ref = matched + sum(inside(t) for j, t in enumerate(reference) if j not in used_r)
    return matched, n_pred, n_ref


def f1_from_counts(matched: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    """(precision, recall, F1) from summed counts; empty sides count as perfect."""
    precision = matched / n_pred if n_pred else 1.0
    recall = matched / n_ref if n_ref else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def path_consistency(positions: np.ndarray, max_step: float) -> tuple[int, int]:
    """(steps within ``max_step + 2`` px, steps) of one centre track ``[T, 2]``; steps from
    or to a frame without an object count as jumps."""
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    return int(np.sum(steps <= max_step + STEP_MARGIN)), len(steps)


def _class_accuracies(
    found: Sequence[Detections], labels: Sequence[int | None]
) -> dict[str, float]:
    """``video_class_accuracy`` / ``audio_class_accuracy``: the share of samples i with a
    known ``labels[i]`` whose ``found[i]`` has that class; empty when no label is known."""
    labelled = [i for i, label in enumerate(labels) if label is not None]
    if not labelled:
        return {}
    return {
        f"{modality}_class_accuracy": float(
            np.mean([getattr(found[i], f"{modality}_class") == labels[i] for i in labelled])
        )
        for modality in ("video", "audio")
    }


def _sync_counts(audios: Sequence[Detections], videos: Sequence[Detections]) -> np.ndarray:
    """int ``[3]``: (matched, heard, seen) events summed over pairs: the heard events of
    ``audios[i]`` against the seen ones of ``videos[i]``, within one frame, counted inside
    the video's visible window."""
    counts = np.zeros(3, dtype=int)  # matched, heard, seen
    for audio, video in zip(audios, videos, strict=True):
        tolerance = 1.0 / video.fps  # one frame
        counts += event_counts(audio.audio_events, video.video_events, tolerance, video.window)
    return counts


def _pooled_path_consistency(
    detections: Sequence[Detections], *, shuffle: bool, seed: int
) -> float | None:
    """``path_consistency`` pooled over the samples with a track and a step: steps within
    ``max_step + 2`` px / steps, the frames in order or (``shuffle``) in a random order per
    sample, drawn in sample order from ``seed``; None without such samples or steps."""
    tracks = [d for d in detections if d.positions is not None and d.max_step is not None]
    if not tracks:
        return None
    rng = np.random.default_rng(seed)
    kept = total = 0
    for d in tracks:
        frames = len(d.positions)
        order = rng.permutation(frames) if shuffle else np.arange(frames)
        k, t = path_consistency(d.positions[order], d.max_step)
        kept, total = kept + k, total + t
    return kept / total if total else None


def score_detections(
    detections: Sequence[Detections],
    pairing: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The scores of the module docstring over a set of samples.

    Args:
        pairing: p; sample i's audio (and label) is compared with sample p[i]'s video (and
            detections, for the class accuracies), and ``path_consistency`` is taken on
            frames in a random order (``seed``). None: each sample with itself, in order.

    Returns:
        {score name: value in [0, 1]}; class accuracies only when some label is known,
        ``path_consistency`` only when positions and steps are known; no entry at all for an
        empty set.
    """
    n = len(detections)
    if n == 0:
        return {}
    p = np.arange(n) if pairing is None else np.asarray(pairing, dtype=int)
    videos = [detections[p[i]] for i in range(n)]  # sample i's audio goes with videos[i]
    out = _class_accuracies(videos, [d.label for d in detections])
    out["av_class_agreement"] = float(
        np.mean(
            [
                audio.audio_class != -1 and video.video_class == audio.audio_class
                for audio, video in zip(detections, videos, strict=True)
            ]
        )
    )
    precision, recall, f1 = f1_from_counts(*_sync_counts(detections, videos))
    out.update(sync_precision=precision, sync_recall=recall, sync_f1=f1)
    share = _pooled_path_consistency(detections, shuffle=pairing is not None, seed=seed)
    if share is not None:
        out["path_consistency"] = share
    return out


def reconstruction_scores(
    recon: Sequence[Detections],
    source: Sequence[Detections],
    key_frames: Sequence[int] = (),
    pairing: Sequence[int] | None = None,
) -> dict[str, float]:
    """How well reconstructions keep their sources' positions and events.

    Args:
        recon, source: detections of each reconstruction and of the clip it came from.
        key_frames: the frames the video encoder sees; the position scores are reported for
            them and for the frames between them apart (an empty part is left out).
        pairing: p; reconstruction i is compared with source p[i] (chance level), None: its
            own source.

    Returns:
        ``position_within_2px`` (share of frames with both centres found and within 2 px; a
        frame where the source shows the object and the reconstruction does not is a miss),
        ``..._key`` / ``..._between``, ``position_error_px`` (mean distance where both are
        found), ``video_event_f1`` / ``audio_event_f1`` (each modality's events against the
        source's, within one frame, inside the visible window), and the class accuracies
        against the source's label.
    """
    n = len(recon)
    if n == 0:
        return {}
    p = np.arange(n) if pairing is None else np.asarray(pairing, dtype=int)
    within = {"key": [], "between": []}
    errors = []
    video_counts, audio_counts = np.zeros(3, int), np.zeros(3, int)
    for i in range(n):
        r, s = recon[i], source[p[i]]
        if r.positions is not None and s.positions is not None:
            dist = np.linalg.norm(r.positions - s.positions, axis=1)  # NaN where either lacks
            shown = np.isfinite(s.positions).all(axis=1)
            for t in np.flatnonzero(shown):
                part = "key" if t in key_frames else "between"
                within[part].append(bool(dist[t] <= POSITION_TOLERANCE))
            errors += list(dist[np.isfinite(dist)])
        tolerance = 1.0 / s.fps
        video_counts += event_counts(r.video_events, s.video_events, tolerance, s.window)
        audio_counts += event_counts(r.audio_events, s.audio_events, tolerance)
    out: dict[str, float] = {}
    both = within["key"] + within["between"]
    if both:
        out["position_within_2px"] = float(np.mean(both))
        for part, hits in within.items():
            if hits:
                out[f"position_within_2px_{part}"] = float(np.mean(hits))
    if errors:
        out["position_error_px"] = float(np.mean(errors))
    out["video_event_f1"] = f1_from_counts(*video_counts)[2]
    out["audio_event_f1"] = f1_from_counts(*audio_counts)[2]
    out.update(_class_accuracies(recon, [source[p[i]].label for i in range(n)]))
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
        "shuffled": (
            score_detections(detections, shuffled_pairing(n, seed), seed) if n >= 2 else {}
        ),
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


def class_from_folder(name: str, num_classes: int, family: str = "ball") -> int | None:
    """Class index of a folder named like :func:`class_table`'s ``NN_colour`` (or ``NN``)."""
    if not 1 <= num_classes <= max_classes(family):
        return None
    names = [entry["name"] for entry in class_table(num_classes, family)]
    if name in names:
        return names.index(name)
    match = re.fullmatch(r"(\d+)(?:_.*)?", name)
    if match and int(match.group(1)) < num_classes:
        return int(match.group(1))
    return None


def label_from_path(path: str | Path, num_classes: int, family: str = "ball") -> int | None:
    """The class of a video: its sidecar's ``class_index``, else its folder name; None when
    neither says (or the index is outside 0..num_classes-1)."""
    sidecar = read_sidecar(path)
    if sidecar is not None and isinstance(sidecar.get("class_index"), int):
        index = sidecar["class_index"]
        if 0 <= index < num_classes:
            return index
        log.warning("%s: class_index %d outside 0..%d; ignored", path, index, num_classes - 1)
    return class_from_folder(Path(path).parent.name, num_classes, family)


def synthetic_family(paths: Sequence[str | Path], num_classes: int = 0) -> tuple[str, int] | None:
    """(family, K) when the videos look like ``mmldm synth-data`` output, else None.

    They do when a sidecar holds the synthetic ground truth (``class_index``, ``num_classes``
    and ``events``, or ``bounces`` in older sidecars; the family from its ``family`` key,
    ``ball`` when absent) or when every video sits in a folder named after a class of a
    family's :func:`class_table` (K = ``num_classes`` from the config; with 0, the sidecars').
    """
    for path in paths:
        sidecar = read_sidecar(path)
        if (
            sidecar
            and {"class_index", "num_classes"} <= set(sidecar)
            and ("events" in sidecar or "bounces" in sidecar)
        ):
            family, k = sidecar.get("family", "ball"), int(sidecar["num_classes"])
            ok = family in FAMILIES and 1 <= k <= max_classes(family)
            return (family, k) if ok else None
    if not paths:
        return None
    for family in FAMILIES:
        if not 1 <= num_classes <= max_classes(family):
            continue
        names = {entry["name"] for entry in class_table(num_classes, family)}
        if all(Path(p).parent.name in names for p in paths):
            return family, num_classes
    return None


def synthetic_num_classes(paths: Sequence[str | Path], num_classes: int = 0) -> int | None:
    """K of :func:`synthetic_family`, or None."""
    found = synthetic_family(paths, num_classes)
    return None if found is None else found[1]
