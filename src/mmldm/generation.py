"""What the pipeline returns (:class:`MMLDMPipelineOutput`) and writing it: one mp4 per sample
(H.264 + AAC), a contact sheet, and the records a caller stores as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput

from mmldm.data.media import write_video
from mmldm.viz import save_grid

OUTPUT_TYPES = ("pt", "np")


@dataclass
class MMLDMPipelineOutput(BaseOutput):
    """Generated sounding videos, in diffusers' output conventions (a dataclass that also reads
    as a dict; frames in [0, 1]).

    ``frames`` and ``audio`` cover the whole output (K clips for long and continuation tasks);
    ``has_audio`` / ``has_video`` say which tracks the task means (v2a's frames are the given
    video, audio-only tasks show the audio image).

    Attributes:
        frames: ``output_type="pt"``: tensor ``[N, T, 3, S, S]``; ``"np"``: float32 array
            ``[N, T, S, S, 3]``; both in [0, 1] at ``fps``.
        audio: ``[N, L]`` in [-1, 1] at ``sample_rate`` (tensor or array, as ``frames``).
        seeds: the seed of each sample's generator.
        settings: the sampling settings that made them (steps, sampler, guidance, decoder).
        labels: the class of each sample, for class-conditional generators.
    """

    frames: torch.Tensor | np.ndarray
    audio: torch.Tensor | np.ndarray
    sample_rate: int
    fps: float
    task: str = "svg"
    seeds: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    has_audio: bool = True
    has_video: bool = True
    labels: list[int] | None = None

    @classmethod
    def from_signals(
        cls,
        frames: torch.Tensor,
        wave: torch.Tensor,
        *,
        output_type: str = "pt",
        **fields,
    ) -> MMLDMPipelineOutput:
        """From decoded signals: ``frames [N, T, 3, S, S]`` and ``wave [N, L]``, both in [-1, 1]
        (the decoder's range), as ``output_type`` ("pt" or "np")."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, not {output_type!r}")
        frames = (frames.float().clamp(-1, 1) + 1) / 2  # [-1, 1] -> [0, 1]
        audio = wave.float().clamp(-1, 1)
        if output_type == "np":
            frames = frames.permute(0, 1, 3, 4, 2).cpu().numpy()  # [N, T, S, S, 3]
            audio = audio.cpu().numpy()
        return cls(frames=frames, audio=audio, **fields)

    def video(self, i: int) -> np.ndarray:
        """Sample i's frames as ``uint8 [T, S, S, 3]``."""
        x = self.frames[i]
        if isinstance(x, torch.Tensor):
            x = x.permute(0, 2, 3, 1).float().cpu().numpy()  # [T, 3, S, S] -> [T, S, S, 3]
        return np.clip(np.round(np.asarray(x, np.float32) * 255), 0, 255).astype(np.uint8)

    def waveform(self, i: int) -> np.ndarray:
        """Sample i's audio as float32 ``[L]`` in [-1, 1]."""
        x = self.audio[i]
        return (x.float().cpu().numpy() if isinstance(x, torch.Tensor) else x).astype(np.float32)


def save_generation(
    gen: MMLDMPipelineOutput,
    out_dir: str | Path,
    start: int = 0,
    names: list[str] | None = None,
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
        frames = gen.video(i)  # [T, S, S, 3] uint8
        audio = gen.waveform(i) if gen.has_audio else None
        write_video(path, frames, gen.fps, audio, gen.sample_rate if gen.has_audio else None)
        step = max(1, len(frames) // 8)
        # [T', S, S, 3] uint8 -> the contact sheet's [3, S, S] images in [-1, 1]
        shown = torch.from_numpy(frames[::step][:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
        rows.append(list(shown))
        records.append(
            {
                "file": path.relative_to(out).as_posix(),
                "task": gen.task,
                "seed": gen.seeds[i],
                "batch_index": i,
                "frames": len(frames),
                "fps": gen.fps,
                "audio_samples": 0 if audio is None else len(audio),
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
