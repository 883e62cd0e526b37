"""Synthetic sounding-video datasets whose audio-visual correspondence is known exactly.

Two families share the machinery here (class tables, the clip record, the dataset writer):

* ``ball`` (this module, the demo's): a ball bouncing off the walls, a click at every bounce;
* ``pulse`` (:mod:`mmldm.synthetic.pulse`): a square orbiting the centre that swells at
  every plucked note. Its shapes, motion, event kind, colours and pitches differ from the ball
  set's, so that settings chosen on one family can be checked on the other.

The ball family: each video shows one filled ball of its class's colour on a plain dark-grey
background, moving at constant velocity and bouncing elastically off the four walls. The sound is a
sine tone of the class's pitch, bent by the ball's height, plus a short click at every bounce:

* class        <-> ball colour (hue) and tone pitch range (disjoint ranges per class),
* ball height  <-> pitch: ``f = base_pitch * 2 ** (PITCH_BEND * h)``, h = +1 top, -1 bottom,
* wall bounce  <-> click, placed at the analytically computed bounce time (sub-frame).

Layout written by :func:`synthesize_dataset` (any family)::

    OUT/<NN_colour>/<id>.mp4    H.264 + AAC, data.resolution^2 at data.fps, mono data.sample_rate
    OUT/<NN_colour>/<id>.json   ground truth (see :meth:`SyntheticClip.ground_truth`)

Geometry: pixel (row i, column j) covers [j, j+1) x [i, i+1); its centre is (j + 0.5, i + 0.5).
Positions are (x, y) in pixels, y pointing down. Frame t shows time t / fps.
:mod:`mmldm.synthetic.detect` recovers all of this from decoded frames and waveforms.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmldm.config import DataConfig
from mmldm.console import progress
from mmldm.data.media import write_video

log = logging.getLogger(__name__)

FAMILIES = ("ball", "pulse")


@dataclass(frozen=True)
class ClassSet:
    """A family's classes: colour hues and tone pitches (class k: ``base * ratio**k``)."""

    palette: tuple[tuple[str, float], ...]  # (name, hue in degrees)
    base_pitch_hz: float
    pitch_ratio: float
    pitch_bend: float  # octaves the tone moves up / down around its base pitch


# The orders put the most distinct hues first, so any prefix of K classes is well separated;
# names never change with K.
CLASS_SETS = {
    "ball": ClassSet(
        palette=(
            ("red", 0.0),
            ("green", 120.0),
            ("blue", 240.0),
            ("yellow", 60.0),
            ("magenta", 300.0),
            ("cyan", 180.0),
            ("orange", 30.0),
            ("violet", 270.0),
            ("azure", 210.0),
            ("chartreuse", 90.0),
        ),
        base_pitch_hz=250.0,
        pitch_ratio=1.45,  # 0.536 octave between consecutive classes
        pitch_bend=0.15,  # ranges stay disjoint
    ),
    "pulse": ClassSet(
        palette=(
            ("orange", 30.0),
            ("azure", 210.0),
            ("chartreuse", 90.0),
            ("rose", 330.0),
            ("spring", 150.0),
            ("violet", 270.0),
        ),
        base_pitch_hz=280.0,
        pitch_ratio=1.5,
        pitch_bend=0.0,  # a steady pitch
    ),
}
_PALETTE = CLASS_SETS["ball"].palette
MAX_CLASSES = len(_PALETTE)  # of the ball family (the most of any family)
BASE_PITCH_HZ = CLASS_SETS["ball"].base_pitch_hz  # class 0
PITCH_RATIO = CLASS_SETS["ball"].pitch_ratio
PITCH_BEND = CLASS_SETS["ball"].pitch_bend  # octaves up (top) / down (bottom)
BACKGROUND = (40, 40, 40)  # uint8 RGB, dark grey: every class colour contrasts with it
TONE_AMPLITUDE = 0.3
CLICK_AMPLITUDE = 0.65  # peak; clearly louder than the tone (tone + click stay in [-1, 1])
CLICK_STD = 1.0  # of the click's noise before clipping to +-1 (then scaled by the amplitude)
CLICK_SECONDS = 0.008
CLICK_DECAY_SECONDS = 0.002  # amplitude time constant of the click's exponential decay
FADE_SECONDS = 0.01  # tone fade in / out: no spurious click at the ends


def check_family(family: str) -> ClassSet:
    if family not in CLASS_SETS:
        raise ValueError(f"unknown synthetic family {family!r}; families: {', '.join(FAMILIES)}")
    return CLASS_SETS[family]


def max_classes(family: str = "ball") -> int:
    return len(check_family(family).palette)


def class_table(num_classes: int, family: str = "ball") -> list[dict[str, Any]]:
    """The classes' names, colours and pitches, shared by the generator and the detectors.

    Returns one dict per class, index k: ``name`` ("00_red", sortable), ``colour`` (name),
    ``rgb`` ([3] ints in 0..255, saturated: HSV value and saturation 1), ``hue`` (degrees),
    ``base_pitch_hz`` (ball: 250 * 1.45**k) and ``pitch_range_hz`` ([low, high] of the tone).
    """
    classes = check_family(family)
    if not 1 <= num_classes <= len(classes.palette):
        raise ValueError(
            f"the synthetic {family} family supports 1..{len(classes.palette)} classes, "
            f"got num_classes={num_classes}"
        )
    table = []
    for k, (colour, hue) in enumerate(classes.palette[:num_classes]):
        rgb = [int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue / 360.0, 1.0, 1.0)]
        base = classes.base_pitch_hz * classes.pitch_ratio**k
        bend = 2.0**classes.pitch_bend
        table.append(
            {
                "index": k,
                "name": f"{k:02d}_{colour}",
                "colour": colour,
                "rgb": rgb,
                "hue": hue,
                "base_pitch_hz": base,
                "pitch_range_hz": [base / bend, base * bend],
            }
        )
    return table


def check_pitches(data: DataConfig, family: str = "ball") -> None:
    """Raise ValueError if a class's tone would reach 8 kHz, data.fmax or 0.45 x the rate.

    With 16 kHz audio this allows up to 9 ball classes; 10 need a sample rate of 17.5 kHz or
    more.
    """
    limit = min(8000.0, float(data.fmax), 0.45 * data.sample_rate)
    for entry in class_table(data.num_classes, family):
        top = entry["pitch_range_hz"][1]
        if top > limit:
            raise ValueError(
                f"class {entry['name']} needs tones up to {top:.0f} Hz, above {limit:.0f} Hz "
                f"(min of 8 kHz, data.fmax={data.fmax} and 0.45 x data.sample_rate="
                f"{data.sample_rate}); use fewer classes or a higher sample rate"
            )


def ball_radius(resolution: int) -> float:
    """Radius in pixels: resolution / 8, at least 3 (4 px at 32x32, 8 px at 64x64)."""
    return max(3.0, resolution / 8.0)


@dataclass
class SyntheticClip:
    """One synthetic sounding video and its exact ground truth.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB; frame t shows time ``t / fps``.
        audio: float32 ``[N]`` mono in [-1, 1], ``N = round(T / fps * sample_rate)``.
        positions: float64 ``[T, 2]`` object centre (x, y) in pixels at each frame time.
        event_times: float64 ``[E]`` seconds, increasing, each in (0, T / fps): the
            audio-visual events (ball: wall bounces = clicks; pulse: swells = note onsets).
        pitch_hz: float64 ``[T]`` tone frequency at each frame time.
        family: which family drew it (:data:`FAMILIES`).
        details: the family's own ground truth, stored in the sidecar too (ball: ``radius``,
            ``velocity`` in px / s at time 0, ``bounces`` [{time, wall}]).
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    class_index: int
    num_classes: int
    positions: np.ndarray
    event_times: np.ndarray
    pitch_hz: np.ndarray
    family: str = "ball"
    details: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the seed, stored in the sidecar

    # the ball family's own ground truth, by name
    @property
    def radius(self) -> float:
        return self.details["radius"]

    @property
    def velocity(self) -> tuple[float, float]:
        return tuple(self.details["velocity"])

    @property
    def bounce_times(self) -> np.ndarray:
        return self.event_times

    @property
    def bounce_walls(self) -> list[str]:
        return [b["wall"] for b in self.details["bounces"]]

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps

    @property
    def class_name(self) -> str:
        return class_table(self.num_classes, self.family)[self.class_index]["name"]

    def ground_truth(self) -> dict[str, Any]:
        """JSON-ready ground truth (the sidecar of the mp4)."""
        table = class_table(self.num_classes, self.family)
        height, width = self.frames.shape[1:3]
        return {
            "family": self.family,
            "class_name": self.class_name,
            "class_index": self.class_index,
            "num_classes": self.num_classes,
            **self.extra,
            "fps": self.fps,
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "num_frames": len(self.frames),
            "num_samples": len(self.audio),
            "resolution": [height, width],
            "frame_times": [t / self.fps for t in range(len(self.frames))],
            "trajectory": [[float(x), float(y)] for x, y in self.positions],
            "events": [float(t) for t in self.event_times],
            "pitch_hz": [float(f) for f in self.pitch_hz],
            **self.details,
            "classes": table,
        }


def _fold(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Unfolded coordinate -> position bouncing between lo and hi (a triangle wave)."""
    span = hi - lo
    m = np.mod(u - lo, 2.0 * span)
    return lo + np.where(m <= span, m, 2.0 * span - m)


def _bounces(u0: float, v: float, lo: float, hi: float, duration: float) -> list[tuple[float, str]]:
    """Times in (0, duration) at which the unfolded coordinate crosses a wall, and which wall.

    The unfolded coordinate ``u0 + v t`` hits a wall whenever ``u - lo`` is a multiple n of
    the span; even n is the low wall, odd n the high wall.
    """
    span = hi - lo
    if v == 0.0:
        return []
    n_start = (u0 - lo) / span
    n_end = (u0 + v * duration - lo) / span
    out = []
    for n in range(math.floor(min(n_start, n_end)), math.ceil(max(n_start, n_end)) + 1):
        t = (lo + n * span - u0) / v
        if 0.0 < t < duration:
            out.append((t, "low" if n % 2 == 0 else "high"))
    return out


def _render(positions: np.ndarray, radius: float, height: int, width: int, rgb) -> np.ndarray:
    """Anti-aliased discs: coverage = clip(r + 0.5 - distance to centre, 0, 1).

    positions: ``[T, 2]`` (x, y) pixels. Returns uint8 ``[T, H, W, 3]``.
    """
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    dx = xs[None, None, :] - positions[:, 0, None, None].astype(np.float32)
    dy = ys[None, :, None] - positions[:, 1, None, None].astype(np.float32)
    coverage = np.clip(radius + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)[..., None]
    back = np.asarray(BACKGROUND, np.float32)
    colour = np.asarray(rgb, np.float32)
    frames = back + coverage * (colour - back)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def synthesize_clip(
    rng: np.random.Generator,
    class_index: int,
    data: DataConfig,
    duration: float,
    family: str = "ball",
) -> SyntheticClip:
    """Draw one sounding video of class ``class_index`` from ``family`` (see
    :func:`ball_clip` and :func:`mmldm.synthetic.pulse.pulse_clip` for what each draws)."""
    check_family(family)
    if family == "pulse":
        from mmldm.synthetic.pulse import pulse_clip  # it builds on this module

        return pulse_clip(rng, class_index, data, duration)
    return ball_clip(rng, class_index, data, duration)


def _crossing_bounds(data: DataConfig) -> tuple[float, float]:
    """Shortest and longest time (s) the ball takes to cross the frame (see :func:`ball_clip`)."""
    scale = min(1.0, data.clip_seconds)
    return max(0.5 * scale, 5.0 / data.fps), max(1.0 * scale, 5.0 / data.fps)


def max_step(data: DataConfig, family: str = "ball") -> float:
    """The longest distance (px) the object's centre moves between two frames, by design."""
    check_family(family)
    if family == "pulse":
        from mmldm.synthetic.pulse import pulse_max_step

        return pulse_max_step(data)
    radius = ball_radius(data.resolution)
    span = data.resolution - 2 * radius
    return math.sqrt(2.0) * span / _crossing_bounds(data)[0] / data.fps


def ball_clip(
    rng: np.random.Generator, class_index: int, data: DataConfig, duration: float
) -> SyntheticClip:
    """Draw one bouncing-ball sounding video of class ``class_index``.

    Args:
        rng: the only source of randomness (start position, direction, speed, click noise).
        data: uses ``num_classes``, ``fps``, ``resolution``, ``sample_rate``.
        duration: seconds; the clip has ``T = max(1, round(duration * fps))`` frames and the
            audio exactly ``T / fps`` seconds.

    Speeds: a crossing time c is drawn from 0.5-1 s, scaled by ``min(1, data.clip_seconds)``
    and at least 5 frames; the speed is ``sqrt(2) * span / c``, so that a 45-degree path crosses
    both ways in c seconds. The direction is 25-65 degrees from an axis, so both axes bounce
    and one axis's crossing takes at least ``c / (sqrt(2) cos 25)`` = 0.78 c (3.9 frames):
    on average 2.6 bounces per clip of ``data.num_frames`` frames (demo), 1.5 (tiny).
    """
    table = class_table(data.num_classes)
    if not 0 <= class_index < len(table):
        raise ValueError(f"class_index {class_index} outside 0..{len(table) - 1}")
    entry = table[class_index]
    fps, rate, size = float(data.fps), int(data.sample_rate), int(data.resolution)
    check_pitches(data)
    num_frames = max(1, int(round(duration * fps)))
    duration = num_frames / fps
    num_samples = int(round(duration * rate))
    radius = ball_radius(size)
    lo, hi = radius, size - radius  # range of the centre: the ball stays inside the frame

    # Motion.
    start = rng.uniform(lo, hi, size=2)
    # Short clips get faster balls (still bouncing within a clip), but never so fast that a
    # bounce falls between too few frames to be seen.
    crossing = max(rng.uniform(0.5, 1.0) * min(1.0, data.clip_seconds), 5.0 / fps)
    speed = math.sqrt(2.0) * (hi - lo) / crossing
    angle = math.radians(rng.uniform(25.0, 65.0) + 90.0 * rng.integers(4))
    velocity = (speed * math.cos(angle), speed * math.sin(angle))

    def position(t: np.ndarray) -> np.ndarray:
        return np.stack(
            [_fold(start[i] + velocity[i] * t, lo, hi) for i in range(2)], axis=-1
        )  # [len(t), 2]

    frame_times = np.arange(num_frames) / fps
    positions = position(frame_times)
    events = [
        (t, "left" if w == "low" else "right")
        for t, w in _bounces(start[0], velocity[0], lo, hi, duration)
    ]
    events += [
        (t, "top" if w == "low" else "bottom")
        for t, w in _bounces(start[1], velocity[1], lo, hi, duration)
    ]
    events.sort()
    bounce_times = np.asarray([t for t, _ in events], np.float64)

    # Video.
    frames = _render(positions, radius, size, size, entry["rgb"])

    # Audio: pitch from the exact height at every sample; phase = integral of the frequency.
    base = entry["base_pitch_hz"]

    def pitch(y: np.ndarray) -> np.ndarray:
        height = 1.0 - 2.0 * (y - lo) / (hi - lo)  # +1 at the top, -1 at the bottom
        return base * 2.0 ** (PITCH_BEND * height)

    sample_times = np.arange(num_samples) / rate
    freq = pitch(position(sample_times)[:, 1])
    phase = 2.0 * np.pi * np.cumsum(freq) / rate + rng.uniform(0.0, 2.0 * np.pi)
    tone = TONE_AMPLITUDE * np.sin(phase)
    fade = min(int(FADE_SECONDS * rate), num_samples // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
        tone[:fade] *= ramp
        tone[num_samples - fade :] *= ramp[::-1]
    click_len = max(1, int(CLICK_SECONDS * rate))
    envelope = np.exp(-np.arange(click_len) / (CLICK_DECAY_SECONDS * rate))
    for t in bounce_times:
        begin = int(round(t * rate))
        end = min(begin + click_len, num_samples)
        # Clipped white noise: a broadband burst with much more energy than its peak would
        # allow a Gaussian one, so it stands out of noise added to the audio.
        burst = np.clip(CLICK_STD * rng.standard_normal(click_len), -1.0, 1.0)
        burst = CLICK_AMPLITUDE * burst * envelope
        if begin < num_samples:
            tone[begin:end] += burst[: end - begin]
    audio = np.clip(tone, -1.0, 1.0).astype(np.float32)

    return SyntheticClip(
        frames=frames,
        audio=audio,
        fps=fps,
        sample_rate=rate,
        class_index=class_index,
        num_classes=data.num_classes,
        positions=positions,
        event_times=bounce_times,
        pitch_hz=pitch(positions[:, 1]),
        details={
            "background_rgb": list(BACKGROUND),
            "radius": radius,
            "velocity": [float(v) for v in velocity],
            "bounces": [{"time": float(t), "wall": w} for t, w in events],
            "pitch_bend_octaves": PITCH_BEND,
            "tone_amplitude": TONE_AMPLITUDE,
            "click_amplitude": CLICK_AMPLITUDE,
        },
    )


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of the dataset drawn with ``seed``."""
    return np.random.default_rng([seed, index])


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
        name = f"{i:0{width}d}"
        path = out_dir / table[k]["name"] / f"{name}.mp4"
        write_video(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
        truth = clip.ground_truth()
        truth["video"] = path.name
        sidecar = path.with_suffix(".json")
        tmp = sidecar.with_name(f".{sidecar.name}.tmp")
        tmp.write_text(json.dumps(truth, indent=1) + "\n")
        tmp.replace(sidecar)  # atomic, like the mp4
        paths.append(path)
    log.info("wrote %d clips to %s", len(paths), out_dir)
    return paths
