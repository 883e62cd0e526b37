"""Small real media files for the tests (written with our own writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmldm.data.media import write_video


def moving_frames(num_frames: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """A bright square moving over a gradient: uint8 [T, H, W, 3]; content differs per frame."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 160, width, dtype=np.float32)[None, :, None]
    frames = np.repeat(np.broadcast_to(base, (height, width, 3))[None], num_frames, 0).copy()
    colour = rng.integers(100, 255, 3)
    for t in range(num_frames):
        x = (3 * t) % max(1, width - 8)
        frames[t, 4:12, x : x + 8] = colour
    return frames.astype(np.uint8)


def tone(seconds: float, sample_rate: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_video(
    path: Path,
    seconds: float = 2.0,
    fps: float = 10.0,
    sample_rate: int = 16000,
    size: tuple[int, int] = (32, 32),
    audio: bool = True,
    freq: float = 440.0,
    seed: int = 0,
) -> Path:
    frames = moving_frames(int(round(seconds * fps)), size[0], size[1], seed=seed)
    wave = tone(seconds, sample_rate, freq) if audio else None
    return write_video(path, frames, fps, wave, sample_rate if audio else None)
