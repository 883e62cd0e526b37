"""The ``ball`` family of synthetic sounding videos (the demo's).

Each video shows one filled ball of its class's colour on a plain dark-grey background, moving
at constant velocity and bouncing elastically off the four walls. The sound is a sine tone of
the class's pitch, bent by the ball's height, plus a short click at every bounce:

* class        <-> ball colour (hue) and tone pitch range (disjoint ranges per class),
* ball height  <-> pitch: ``f = base_pitch * 2 ** (PITCH_BEND * h)``, h = +1 top, -1 bottom,
* wall bounce  <-> click, placed at the analytically computed bounce time (sub-frame).

Geometry and time conventions are those of :mod:`mmldm.synthetic.families`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmldm.synthetic.classes import CLASS_SETS
from mmldm.synthetic.clip import SyntheticClip, clip_spec, composite, fade_ends

if TYPE_CHECKING:  # the clips read a data config's fields
    from mmldm.config import DataConfig

PITCH_BEND = CLASS_SETS["ball"].pitch_bend  # octaves up (top) / down (bottom)
BACKGROUND = (40, 40, 40)  # uint8 RGB, dark grey: every class colour contrasts with it
TONE_AMPLITUDE = 0.3
CLICK_AMPLITUDE = 0.65  # peak; clearly louder than the tone (tone + click stay in [-1, 1])
CLICK_STD = 1.0  # of the click's noise before clipping to +-1 (then scaled by the amplitude)
CLICK_SECONDS = 0.008
CLICK_DECAY_SECONDS = 0.002  # amplitude time constant of the click's exponential decay


def ball_radius(resolution: int) -> float:
    """Radius in pixels: resolution / 8, at least 3 (4 px at 32x32, 8 px at 64x64)."""
    return max(3.0, resolution / 8.0)


def _crossing_bounds(data: DataConfig) -> tuple[float, float]:
    """Shortest and longest time (s) the ball takes to cross the frame (see :func:`ball_clip`)."""
    scale = min(1.0, data.clip_seconds)
    return max(0.5 * scale, 5.0 / data.fps), max(1.0 * scale, 5.0 / data.fps)


def ball_max_step(data: DataConfig) -> float:
    """The longest distance (px) the centre moves between two frames: the fastest crossing."""
    radius = ball_radius(data.resolution)
    span = data.resolution - 2 * radius
    return math.sqrt(2.0) * span / _crossing_bounds(data)[0] / data.fps


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


@dataclass(frozen=True)
class _Motion:
    """The ball's straight path, folded by the walls.

    start: float64 ``[2]`` centre (x, y) px at time 0; velocity: (x, y) px / s; lo, hi: the
    range (px) of the centre on both axes, so that the ball stays inside the frame.
    """

    start: np.ndarray
    velocity: tuple[float, float]
    lo: float
    hi: float

    def at(self, t: np.ndarray) -> np.ndarray:
        """Centre (x, y) px at times ``t`` (s, ``[M]``): float64 ``[M, 2]``."""
        return np.stack(
            [_fold(self.start[i] + self.velocity[i] * t, self.lo, self.hi) for i in range(2)],
            axis=-1,
        )

    def bounces(self, duration: float) -> list[tuple[float, str]]:
        """(time s, wall) of every bounce in (0, duration), by time; walls: left, right,
        top, bottom."""
        events = [
            (t, "left" if w == "low" else "right")
            for t, w in _bounces(self.start[0], self.velocity[0], self.lo, self.hi, duration)
        ]
        events += [
            (t, "top" if w == "low" else "bottom")
            for t, w in _bounces(self.start[1], self.velocity[1], self.lo, self.hi, duration)
        ]
        events.sort()
        return events

    def pitch(self, y: np.ndarray, base: float) -> np.ndarray:
        """Tone frequency (Hz, ``[M]``) at heights ``y`` (px, ``[M]``) around ``base`` Hz."""
        height = 1.0 - 2.0 * (y - self.lo) / (self.hi - self.lo)  # +1 at the top, -1 at the bottom
        return base * 2.0 ** (PITCH_BEND * height)


def _draw_motion(
    rng: np.random.Generator, lo: float, hi: float, fps: float, clip_seconds: float
) -> _Motion:
    """Draw the start (px), the crossing time (s) and the direction (see :func:`ball_clip`),
    in this order; ``[lo, hi]`` is the centre's range (px) on both axes."""
    start = rng.uniform(lo, hi, size=2)
    # Short clips get faster balls (still bouncing within a clip), but never so fast that a
    # bounce falls between too few frames to be seen.
    crossing = max(rng.uniform(0.5, 1.0) * min(1.0, clip_seconds), 5.0 / fps)
    speed = math.sqrt(2.0) * (hi - lo) / crossing
    angle = math.radians(rng.uniform(25.0, 65.0) + 90.0 * rng.integers(4))
    return _Motion(start, (speed * math.cos(angle), speed * math.sin(angle)), lo, hi)


def _render(positions: np.ndarray, radius: float, height: int, width: int, rgb) -> np.ndarray:
    """Anti-aliased discs: coverage = clip(r + 0.5 - distance to centre, 0, 1).

    positions: ``[T, 2]`` (x, y) pixels. Returns uint8 ``[T, H, W, 3]``.
    """
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    dx = xs[None, None, :] - positions[:, 0, None, None].astype(np.float32)
    dy = ys[None, :, None] - positions[:, 1, None, None].astype(np.float32)
    coverage = np.clip(radius + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)[..., None]
    return composite(coverage, rgb, BACKGROUND)


def _tone(rng: np.random.Generator, freq: np.ndarray, rate: int) -> np.ndarray:
    """The faded sine tone of frequency ``freq`` (Hz per sample, ``[N]``) from a random phase:
    float64 ``[N]``; phase = integral of the frequency."""
    phase = 2.0 * np.pi * np.cumsum(freq) / rate + rng.uniform(0.0, 2.0 * np.pi)
    tone = TONE_AMPLITUDE * np.sin(phase)
    fade_ends(tone, rate)
    return tone


def _add_clicks(rng: np.random.Generator, audio: np.ndarray, times: np.ndarray, rate: int) -> None:
    """Add a noise click at each of ``times`` (s, ``[B]``) to ``audio`` (``[N]``), in place;
    one noise draw of ``CLICK_SECONDS`` per click, in order, even where it starts too late."""
    num_samples = len(audio)
    click_len = max(1, int(CLICK_SECONDS * rate))
    envelope = np.exp(-np.arange(click_len) / (CLICK_DECAY_SECONDS * rate))
    for t in times:
        begin = int(round(t * rate))
        end = min(begin + click_len, num_samples)
        # Clipped white noise: a broadband burst with much more energy than its peak would
        # allow a Gaussian one, so it stands out of noise added to the audio.
        burst = np.clip(CLICK_STD * rng.standard_normal(click_len), -1.0, 1.0)
        burst = CLICK_AMPLITUDE * burst * envelope
        if begin < num_samples:
            audio[begin:end] += burst[: end - begin]


def _details(radius: float, motion: _Motion, events: list[tuple[float, str]]) -> dict[str, Any]:
    """The ball family's own ground truth (:attr:`SyntheticClip.details`)."""
    return {
        "background_rgb": list(BACKGROUND),
        "radius": radius,
        "velocity": [float(v) for v in motion.velocity],
        "bounces": [{"time": float(t), "wall": w} for t, w in events],
        "pitch_bend_octaves": PITCH_BEND,
        "tone_amplitude": TONE_AMPLITUDE,
        "click_amplitude": CLICK_AMPLITUDE,
    }


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
    spec = clip_spec(data, class_index, duration, "ball")
    radius = ball_radius(spec.size)
    lo, hi = radius, spec.size - radius  # range of the centre: the ball stays inside the frame
    # The draws keep their order (motion, tone phase, clicks): a seed gives the same clip.
    motion = _draw_motion(rng, lo, hi, spec.fps, data.clip_seconds)
    positions = motion.at(spec.frame_times)
    events = motion.bounces(spec.duration)
    bounce_times = np.asarray([t for t, _ in events], np.float64)

    frames = _render(positions, radius, spec.size, spec.size, spec.entry["rgb"])

    # Audio: pitch from the exact height at every sample.
    base = spec.entry["base_pitch_hz"]
    audio = _tone(rng, motion.pitch(motion.at(spec.sample_times)[:, 1], base), spec.sample_rate)
    _add_clicks(rng, audio, bounce_times, spec.sample_rate)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)

    pitch_hz = motion.pitch(positions[:, 1], base)
    return spec.record(
        frames, audio, positions, bounce_times, pitch_hz, _details(radius, motion, events)
    )
