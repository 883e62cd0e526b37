"""Synthetic sounding-video datasets whose audio-visual correspondence is known exactly.

Two families, drawn through the table here (:func:`synthesize_clip`, :func:`max_step`) and
written by the same dataset writer (:func:`synthesize_dataset`):

* ``ball`` (:mod:`mmldm.synthetic.ball`, the demo's): a ball bouncing off the walls, a click at
  every bounce;
* ``pulse`` (:mod:`mmldm.synthetic.pulse`): a square orbiting the centre that swells at
  every plucked note. Its shapes, motion, event kind, colours and pitches differ from the ball
  set's, so that settings chosen on one family can be checked on the other.

Both build on the class tables (:mod:`mmldm.synthetic.classes`) and the clip record
(:mod:`mmldm.synthetic.clip`).

Layout written by :func:`synthesize_dataset` (any family)::

    OUT/<NN_colour>/<id>.mp4    H.264 + AAC, data.resolution^2 at data.fps, mono data.sample_rate
    OUT/<NN_colour>/<id>.json   ground truth (see :meth:`SyntheticClip.ground_truth`)

Geometry: pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5).
Positions are (x, y) in pixels, y pointing down. Frame t shows time t / fps.
:mod:`mmldm.synthetic.detect` recovers all of this from decoded frames and waveforms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mmldm.console import progress
from mmldm.data.media import write_json, write_video
from mmldm.synthetic.ball import ball_clip, ball_max_step, ball_radius
from mmldm.synthetic.classes import FAMILIES, check_family, check_pitches, class_table
from mmldm.synthetic.clip import SyntheticClip, clip_rng
from mmldm.synthetic.pulse import pulse_clip, pulse_max_step

if TYPE_CHECKING:  # the clips read a data config's fields
    from mmldm.config import DataConfig

# The family-level names, and those the CLI and tests import from here although they live
# in classes / clip / ball.
__all__ = [
    "FAMILIES",
    "ball_radius",
    "check_pitches",
    "class_table",
    "clip_rng",
    "max_step",
    "synthesize_clip",
    "synthesize_dataset",
]

log = logging.getLogger(__name__)


class _Family(NamedTuple):
    """How a family draws a clip, and the fastest motion (px per frame) it draws."""

    draw: Callable[[np.random.Generator, int, DataConfig, float], SyntheticClip]
    max_step: Callable[[DataConfig], float]


_FAMILY_TABLE = {
    "ball": _Family(ball_clip, ball_max_step),
    "pulse": _Family(pulse_clip, pulse_max_step),
}


def synthesize_clip(
    rng: np.random.Generator,
    class_index: int,
    data: DataConfig,
    duration: float,
    family: str = "ball",
) -> SyntheticClip:
    """Draw one sounding video of class ``class_index`` from ``family`` (see
    :func:`mmldm.synthetic.ball.ball_clip` and :func:`mmldm.synthetic.pulse.pulse_clip` for
    what each draws)."""
    check_family(family)
    return _FAMILY_TABLE[family].draw(rng, class_index, data, duration)


def max_step(data: DataConfig, family: str = "ball") -> float:
    """The longest distance (px) the object's centre moves between two frames, by design."""
    check_family(family)
    return _FAMILY_TABLE[family].max_step(data)


def _write_clip(path: Path, clip: SyntheticClip) -> None:
    """``path`` (mp4: H.264 + AAC) and its sidecar ``path.json`` (the ground truth)."""
    write_video(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
    truth = clip.ground_truth()
    truth["video"] = path.name
    write_json(path.with_suffix(".json"), truth, indent=1)  # atomic, like the mp4


def synthesize_dataset(
    out_dir: str | Path,
    num_clips: int,
    *,
    seed: int,
    data: DataConfig,
    duration: float | None = None,
    family: str = "ball",
) -> list[Path]:
    """Write ``num_clips`` sounding videos of ``family`` with sidecars to
    ``OUT/<class>/<id>.mp4|json``.

    Classes are balanced: clip i has class ``i % K``. Clip i is drawn from
    ``clip_rng(seed, i)``, so each clip depends only on (seed, i, data, duration, family) and
    the same seed gives the same frames and audio. ``duration`` defaults to two clips of the
    config (``2 * data.clip_seconds``). Returns the mp4 paths in clip order.
    """
    if num_clips < 0:
        raise ValueError(f"num_clips must be >= 0, got {num_clips}")
    out_dir = Path(out_dir)
    table = class_table(data.num_classes, family)
    check_pitches(data, family)
    duration = 2.0 * data.clip_seconds if duration is None else float(duration)
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    if data.resolution % 2:
        raise ValueError(f"H.264 needs an even data.resolution, got {data.resolution}")
    log.info(
        "synthesizing %d %s clips of %.2fs, %d classes, %dx%d at %g fps, %d Hz, into %s",
        num_clips, family, duration, len(table), data.resolution, data.resolution, data.fps,
        data.sample_rate, out_dir,
    )  # fmt: skip
    paths = []
    width = max(5, len(str(max(num_clips - 1, 0))))
    for i in progress(range(num_clips), total=num_clips, desc="synth-data"):
        k = i % len(table)
        clip = synthesize_clip(clip_rng(seed, i), k, data, duration, family)
        clip.extra = {"seed": seed, "clip_index": i, "rng": f"numpy default_rng([{seed}, {i}])"}
        path = out_dir / table[k]["name"] / f"{i:0{width}d}.mp4"
        _write_clip(path, clip)
        paths.append(path)
    log.info("wrote %d clips to %s", len(paths), out_dir)
    return paths
