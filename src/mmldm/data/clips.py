"""Fixed-length clips: where they start, which frames they take, resizing and flipping.

A clip is F = data.num_frames frames on the grid t_k = start + k / fps and the audio of
[start, start + F / fps). Sources at another frame rate are converted while decoding
(``read_media(grid_fps=...)``): each grid time takes the frame shown at that moment.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def clip_starts(duration: float, num_frames: int, fps: float, stride: int) -> list[float]:
    """Start times (s) of the clips of a video: a sliding window of ``stride`` frames.

    Only clips that fit entirely into ``duration`` are returned (possibly none).
    """
    grid = int(np.floor(duration * fps + 1e-6))  # whole frames on the clip grid
    if grid < num_frames:
        return []
    return [k / fps for k in range(0, grid - num_frames + 1, stride)]


def resize_frames(frames: np.ndarray, size: int, mode: str = "letterbox") -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` frames to ``[T, size, size, 3]``.

    letterbox: the longer side becomes ``size``, aspect kept, black bars (the paper's choice).
    center_crop: the shorter side becomes ``size``, the centre square is kept.
    """
    t, h, w, _ = frames.shape
    if mode == "letterbox":
        scale = size / max(h, w)
    elif mode == "center_crop":
        scale = size / min(h, w)
    else:
        raise ValueError(f"unknown resize mode {mode!r} (letterbox | center_crop)")
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((t, size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
        array = np.asarray(image)
        if mode == "letterbox":
            top, left = (size - new_h) // 2, (size - new_w) // 2
            out[i, top : top + new_h, left : left + new_w] = array
        else:
            top, left = (new_h - size) // 2, (new_w - size) // 2
            out[i] = array[top : top + size, left : left + size]
    return out


def hflip(frames: np.ndarray) -> np.ndarray:
    """Mirror ``[T, H, W, C]`` frames left-right (the same flip for every frame of a clip)."""
    return np.ascontiguousarray(frames[:, :, ::-1])


def frames_to_tensor_layout(frames: np.ndarray) -> np.ndarray:
    """``uint8 [T, H, W, 3]`` -> ``float32 [T, 3, H, W]`` in [-1, 1]."""
    return frames.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
