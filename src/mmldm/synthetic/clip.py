"""The record of one synthetic sounding video, and what every family's generator builds it
from: the clip's random generator, its frame and sample grids (:class:`ClipSpec`), the fades
of its sound and the blending of its object into the frames.

Geometry and time conventions are those of :mod:`mmldm.synthetic.families`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mmldm.synthetic.classes import check_pitches, class_table

if TYPE_CHECKING:  # the clips read a data config's fields
    from mmldm.config import DataConfig

FADE_SECONDS = 0.01  # tone fade in / out: no spurious click at the ends


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
        family: which family drew it (:data:`mmldm.synthetic.classes.FAMILIES`).
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


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of the dataset drawn with ``seed``."""
    return np.random.default_rng([seed, index])


@dataclass(frozen=True)
class ClipSpec:
    """What a family's generator is asked to draw: the class, and the frame and sample grids.

    ``entry`` is the class's row of :func:`mmldm.synthetic.classes.class_table`; ``size`` the
    frame's side (px); the clip lasts ``num_frames / fps`` seconds, its audio
    ``num_samples = round(num_frames / fps * sample_rate)`` samples.
    """

    family: str
    class_index: int
    num_classes: int
    entry: dict[str, Any]
    fps: float
    sample_rate: int
    size: int
    num_frames: int
    num_samples: int

    @property
    def duration(self) -> float:
        """Seconds: a whole number of frames."""
        return self.num_frames / self.fps

    @property
    def frame_times(self) -> np.ndarray:
        """float64 ``[T]`` seconds: frame t shows time ``t / fps``."""
        return np.arange(self.num_frames) / self.fps

    @property
    def sample_times(self) -> np.ndarray:
        """float64 ``[N]`` seconds of the audio samples."""
        return np.arange(self.num_samples) / self.sample_rate

    def record(
        self,
        frames: np.ndarray,
        audio: np.ndarray,
        positions: np.ndarray,
        event_times: np.ndarray,
        pitch_hz: np.ndarray,
        details: dict[str, Any],
    ) -> SyntheticClip:
        """The drawn clip (see :class:`SyntheticClip` for the arrays' shapes)."""
        return SyntheticClip(
            frames=frames,
            audio=audio,
            fps=self.fps,
            sample_rate=self.sample_rate,
            class_index=self.class_index,
            num_classes=self.num_classes,
            positions=positions,
            event_times=event_times,
            pitch_hz=pitch_hz,
            family=self.family,
            details=details,
        )


def clip_spec(data: DataConfig, class_index: int, duration: float, family: str) -> ClipSpec:
    """Check the class and the pitches of ``family`` and lay out a clip of ``duration`` s.

    ``data`` gives ``num_classes``, ``fps``, ``resolution``, ``sample_rate``; the clip has
    ``T = max(1, round(duration * fps))`` frames and its audio exactly ``T / fps`` seconds.
    """
    table = class_table(data.num_classes, family)
    if not 0 <= class_index < len(table):
        raise ValueError(f"class_index {class_index} outside 0..{len(table) - 1}")
    check_pitches(data, family)
    fps, rate = float(data.fps), int(data.sample_rate)
    num_frames = max(1, int(round(duration * fps)))
    return ClipSpec(
        family=family,
        class_index=class_index,
        num_classes=data.num_classes,
        entry=table[class_index],
        fps=fps,
        sample_rate=rate,
        size=int(data.resolution),
        num_frames=num_frames,
        num_samples=int(round(num_frames / fps * rate)),
    )


def fade_ends(signal: np.ndarray, sample_rate: int) -> None:
    """Fade a float ``[N]`` signal in and out over :data:`FADE_SECONDS` (raised cosine, at
    most half the signal each), in place: no spurious click or onset at the ends."""
    num_samples = len(signal)
    fade = min(int(FADE_SECONDS * sample_rate), num_samples // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
        signal[:fade] *= ramp
        signal[num_samples - fade :] *= ramp[::-1]


def composite(coverage: np.ndarray, rgb, background) -> np.ndarray:
    """Frames of an object of colour ``rgb`` over ``background`` (both RGB 0..255).

    coverage: ``[T, H, W, 1]`` share of each pixel the object covers, in [0, 1]; the blend is
    computed in its dtype. Returns uint8 ``[T, H, W, 3]``.
    """
    back = np.asarray(background, coverage.dtype)
    frames = back + coverage * (np.asarray(rgb, coverage.dtype) - back)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)
