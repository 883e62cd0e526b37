"""The ``pulse`` family of synthetic sounding videos: a second, independent benchmark.

It shares nothing with the ball family (:mod:`mmldm.synthetic.ball`) but the clip record
(:mod:`mmldm.synthetic.clip`) and the dataset writer (:mod:`mmldm.synthetic.families`), so that
settings chosen on the ball set can be checked here:

* shape: a filled square (half side ``resolution / 10``, at least 2.5 px) on a mid-grey
  background, in one of the family's own hues (orange, azure, chartreuse, rose, ...);
* motion: a circular orbit around the frame centre at a constant angular speed (no walls,
  no reversals);
* event: at each event the square swells to 1.7x its side and shrinks back exponentially
  (time constant 0.12 s), and a plucked note of the class pitch starts (3 ms attack,
  0.10 s decay) over a quiet drone of the same pitch;
* sound: a steady harmonic tone (partials 1, 2, 3 at amplitudes 1, 0.5, 0.3) of the class
  pitch ``280 * 1.5**k`` Hz; nothing follows the position.

Events are 0.3-0.7 s apart (the first 0.1-0.5 s after the start), about two per second.
Geometry and time conventions are those of :mod:`mmldm.synthetic.families`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmldm.synthetic.clip import ClipSpec, SyntheticClip, clip_spec, composite, fade_ends

if TYPE_CHECKING:  # the clips read a data config's fields
    from mmldm.config import DataConfig

BACKGROUND = (96, 96, 96)
SWELL = 0.7  # the side grows by this fraction at an event
SWELL_SECONDS = 0.12  # decay time constant of the swell
NOTE_DECAY_SECONDS = 0.10
NOTE_ATTACK_SECONDS = 0.003
NOTE_AMPLITUDE = 0.5
DRONE_AMPLITUDE = 0.08
PARTIALS = (1.0, 0.5, 0.3)  # amplitudes of the harmonics 1, 2, 3
ORBIT_RADIUS = (0.18, 0.26)  # x resolution
TURNS_PER_SECOND = (0.5, 1.0)
EVENT_GAP_SECONDS = (0.3, 0.7)
FIRST_EVENT_SECONDS = (0.1, 0.5)


def half_side(resolution: int) -> float:
    """Half the square's side at rest: resolution / 10, at least 2.5 px (3.2 px at 32x32)."""
    return max(2.5, resolution / 10.0)


def pulse_max_step(data: DataConfig) -> float:
    """The longest distance (px) the centre moves between two frames: the fastest orbit."""
    return 2.0 * math.pi * ORBIT_RADIUS[1] * data.resolution * TURNS_PER_SECOND[1] / data.fps


def _decays(times: np.ndarray, events: np.ndarray, tau: float, attack: float = 0.0):
    """``[len(times), len(events)]``: each event's envelope at each time, 0 before it, a
    linear rise over ``attack`` seconds, then ``exp(-(t - e) / tau)``."""
    lag = times[:, None] - events[None, :]
    rise = np.clip(lag / attack, 0.0, 1.0) if attack > 0 else (lag >= 0).astype(np.float64)
    return rise * np.exp(-np.clip(lag, 0.0, None) / tau)


def _render_squares(positions: np.ndarray, halves: np.ndarray, size: int, rgb) -> np.ndarray:
    """Anti-aliased axis-aligned squares, coverage = product of the two axes' edge ramps.

    positions: ``[T, 2]`` (x, y) px; halves: ``[T]`` half sides. Returns uint8 ``[T, S, S, 3]``.
    """
    centres = np.arange(size, dtype=np.float64) + 0.5
    h = halves[:, None]
    cover_x = np.clip(h + 0.5 - np.abs(centres[None] - positions[:, 0, None]), 0.0, 1.0)
    cover_y = np.clip(h + 0.5 - np.abs(centres[None] - positions[:, 1, None]), 0.0, 1.0)
    coverage = (cover_y[:, :, None] * cover_x[:, None, :])[..., None]  # [T, S, S, 1]
    return composite(coverage, rgb, BACKGROUND)


@dataclass(frozen=True)
class _Orbit:
    """The square's circular path: ``radius`` px around ``centre`` px (both axes), at
    ``omega`` radians / s (sign: direction), at angle ``phase`` radians at time 0."""

    centre: float
    radius: float
    omega: float
    phase: float

    def at(self, t: np.ndarray) -> np.ndarray:
        """Centre (x, y) px at times ``t`` (s, ``[M]``): float64 ``[M, 2]``."""
        angle = self.phase + self.omega * t
        return np.stack(
            [self.centre + self.radius * np.cos(angle), self.centre + self.radius * np.sin(angle)],
            axis=-1,
        )

    def details(self) -> dict[str, Any]:
        """The orbit as stored in the sidecar (``orbit``)."""
        return {
            "centre": [self.centre, self.centre],
            "radius": float(self.radius),
            "radians_per_second": float(self.omega),
            "phase": float(self.phase),
        }


def _draw_orbit(rng: np.random.Generator, size: int) -> _Orbit:
    """Draw the orbit's radius, angular speed, direction and phase, in this order, for a frame
    of ``size`` px."""
    radius = rng.uniform(*ORBIT_RADIUS) * size
    omega = 2.0 * math.pi * rng.uniform(*TURNS_PER_SECOND) * rng.choice([-1.0, 1.0])
    phase = rng.uniform(0.0, 2.0 * math.pi)
    return _Orbit(size / 2.0, radius, omega, phase)


def _draw_events(rng: np.random.Generator, duration: float) -> np.ndarray:
    """Event times (s, float64 ``[E]``, increasing): the first, then gaps until 20 ms before
    the end of the ``duration``-second clip."""
    events = []
    t = rng.uniform(*FIRST_EVENT_SECONDS)
    while t < duration - 0.02:
        events.append(t)
        t += rng.uniform(*EVENT_GAP_SECONDS)
    return np.asarray(events, np.float64)


def _synthesize_audio(
    rng: np.random.Generator, spec: ClipSpec, event_times: np.ndarray
) -> np.ndarray:
    """The harmonic tone (random phase per partial, in order) under a drone + plucked-note
    envelope: float32 ``[N]`` in [-1, 1]."""
    base = spec.entry["base_pitch_hz"]
    sample_times = spec.sample_times
    tone = sum(
        a * np.sin(2.0 * np.pi * (k + 1) * base * sample_times + rng.uniform(0, 2 * np.pi))
        for k, a in enumerate(PARTIALS)
    ) / sum(PARTIALS)
    notes = _decays(sample_times, event_times, NOTE_DECAY_SECONDS, NOTE_ATTACK_SECONDS)
    envelope = DRONE_AMPLITUDE + NOTE_AMPLITUDE * notes.sum(axis=1)
    fade_ends(envelope, spec.sample_rate)  # no spurious onset at the ends
    return np.clip(envelope * tone, -1.0, 1.0).astype(np.float32)


def pulse_clip(
    rng: np.random.Generator, class_index: int, data: DataConfig, duration: float
) -> SyntheticClip:
    """Draw one pulse-family sounding video of class ``class_index`` (see the module text).

    Args:
        rng: the only source of randomness (orbit, phase, direction, speed, event times).
        data: uses ``num_classes``, ``fps``, ``resolution``, ``sample_rate``.
        duration: seconds; ``T = max(1, round(duration * fps))`` frames, audio ``T / fps`` s.
    """
    spec = clip_spec(data, class_index, duration, "pulse")
    # The draws keep their order (orbit, events, partial phases): a seed gives the same clip.
    orbit = _draw_orbit(rng, spec.size)
    event_times = _draw_events(rng, spec.duration)

    frame_times = spec.frame_times
    positions = orbit.at(frame_times)
    swell = _decays(frame_times, event_times, SWELL_SECONDS).sum(axis=1)
    halves = half_side(spec.size) * (1.0 + SWELL * swell)
    frames = _render_squares(positions, halves, spec.size, spec.entry["rgb"])

    audio = _synthesize_audio(rng, spec, event_times)

    details = {
        "background_rgb": list(BACKGROUND),
        "half_side": half_side(spec.size),
        "half_sides": [float(h) for h in halves],
        "orbit": orbit.details(),
    }
    pitch_hz = np.full(spec.num_frames, spec.entry["base_pitch_hz"])
    return spec.record(frames, audio, positions, event_times, pitch_hz, details)
