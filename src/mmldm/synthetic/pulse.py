"""The ``pulse`` family of synthetic sounding videos: a second, independent benchmark.

It shares nothing with the ball family but the clip record and the dataset writer
(:mod:`mmldm.synthetic.families`), so that settings chosen on the ball set can be checked here:

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

import numpy as np

from mmldm.config import DataConfig
from mmldm.synthetic.families import SyntheticClip, check_pitches, class_table

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
    back = np.asarray(BACKGROUND, np.float64)
    frames = back + coverage * (np.asarray(rgb, np.float64) - back)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def pulse_clip(
    rng: np.random.Generator, class_index: int, data: DataConfig, duration: float
) -> SyntheticClip:
    """Draw one pulse-family sounding video of class ``class_index`` (see the module text).

    Args:
        rng: the only source of randomness (orbit, phase, direction, speed, event times).
        data: uses ``num_classes``, ``fps``, ``resolution``, ``sample_rate``.
        duration: seconds; ``T = max(1, round(duration * fps))`` frames, audio ``T / fps`` s.
    """
    table = class_table(data.num_classes, "pulse")
    if not 0 <= class_index < len(table):
        raise ValueError(f"class_index {class_index} outside 0..{len(table) - 1}")
    check_pitches(data, "pulse")
    entry = table[class_index]
    fps, rate, size = float(data.fps), int(data.sample_rate), int(data.resolution)
    num_frames = max(1, int(round(duration * fps)))
    duration = num_frames / fps
    num_samples = int(round(duration * rate))

    radius = rng.uniform(*ORBIT_RADIUS) * size
    omega = 2.0 * math.pi * rng.uniform(*TURNS_PER_SECOND) * rng.choice([-1.0, 1.0])
    phase = rng.uniform(0.0, 2.0 * math.pi)
    events = []
    t = rng.uniform(*FIRST_EVENT_SECONDS)
    while t < duration - 0.02:
        events.append(t)
        t += rng.uniform(*EVENT_GAP_SECONDS)
    event_times = np.asarray(events, np.float64)

    frame_times = np.arange(num_frames) / fps
    angle = phase + omega * frame_times
    centre = size / 2.0
    positions = np.stack(
        [centre + radius * np.cos(angle), centre + radius * np.sin(angle)], axis=-1
    )
    swell = _decays(frame_times, event_times, SWELL_SECONDS).sum(axis=1)
    halves = half_side(size) * (1.0 + SWELL * swell)
    frames = _render_squares(positions, halves, size, entry["rgb"])

    base = entry["base_pitch_hz"]
    sample_times = np.arange(num_samples) / rate
    tone = sum(
        a * np.sin(2.0 * np.pi * (k + 1) * base * sample_times + rng.uniform(0, 2 * np.pi))
        for k, a in enumerate(PARTIALS)
    ) / sum(PARTIALS)
    notes = _decays(sample_times, event_times, NOTE_DECAY_SECONDS, NOTE_ATTACK_SECONDS)
    envelope = DRONE_AMPLITUDE + NOTE_AMPLITUDE * notes.sum(axis=1)
    fade = min(int(0.01 * rate), num_samples // 2)
    if fade > 0:  # no spurious onset at the ends
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
        envelope[:fade] *= ramp
        envelope[num_samples - fade :] *= ramp[::-1]
    audio = np.clip(envelope * tone, -1.0, 1.0).astype(np.float32)

    return SyntheticClip(
        frames=frames,
        audio=audio,
        fps=fps,
        sample_rate=rate,
        class_index=class_index,
        num_classes=data.num_classes,
        positions=positions,
        event_times=event_times,
        pitch_hz=np.full(num_frames, base),
        family="pulse",
        details={
            "background_rgb": list(BACKGROUND),
            "half_side": half_side(size),
            "half_sides": [float(h) for h in halves],
            "orbit": {
                "centre": [centre, centre],
                "radius": float(radius),
                "radians_per_second": float(omega),
                "phase": float(phase),
            },
        },
    )
