"""What a generation task returns (:class:`Generation`) and writing it: one mp4 per sample
(H.264 + AAC), a contact sheet, and the records a caller stores as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmldm.data.media import write_video
from mmldm.viz import save_grid


@dataclass
class Generation:
    """Generated sounding videos. ``frames`` and ``wave`` cover the whole output (K clips for
    long and continuation tasks); ``has_audio`` / ``has_video`` say which tracks are meant."""

    task: str
    frames: torch.Tensor  # [N, T, 3, S, S] in [-1, 1]
    wave: torch.Tensor  # [N, L] in [-1, 1]
    fps: float
    sample_rate: int
    seeds: list[int]
    settings: dict = field(default_factory=dict)
    has_audio: bool = True
    has_video: bool = True
    labels: list[int] | None = None


def save_generation(
    gen: Generation, out_dir: str | Path, start: int = 0, names: list[str] | None = None
) -> list[dict]:
    """Write one mp4 per sample (H.264 + AAC), ``{name}.mp4`` with ``names`` (which may hold
    subfolders) or ``{task}_{start + i:04d}.mp4``, and a contact sheet of the batch; returns
    one record per sample (file relative to ``out_dir``, seed, settings) for the caller's JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for i in range(len(gen.frames)):
        path = out / f"{names[i] if names else f'{gen.task}_{start + i:04d}'}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(
            path,
            gen.frames[i].permute(0, 2, 3, 1).cpu().numpy(),
            gen.fps,
            gen.wave[i].cpu().numpy() if gen.has_audio else None,
            gen.sample_rate if gen.has_audio else None,
        )
        step = max(1, gen.frames.shape[1] // 8)
        rows.append(list(gen.frames[i, ::step][:8]))
        records.append(
            {
                "file": path.relative_to(out).as_posix(),
                "task": gen.task,
                "seed": gen.seeds[i],
                "batch_index": i,
                "frames": gen.frames.shape[1],
                "fps": gen.fps,
                "audio_samples": gen.wave.shape[1] if gen.has_audio else 0,
                "sample_rate": gen.sample_rate,
                "settings": gen.settings,
                **({"class_index": gen.labels[i]} if gen.labels else {}),
            }
        )
    save_grid(
        rows,
        out / f"{gen.task}_sheet_{start:04d}.png",
        [Path(r["file"]).stem for r in records],
    )
    return records
