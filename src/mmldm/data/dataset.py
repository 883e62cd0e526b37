"""Datasets of sounding-video clips from a folder or a manifest, with an optional decode cache.

Where the class of a video comes from (``data.layout``):
    folder    ROOT/<class>/<video>.mp4                   (Landscape)
    regex     the named group ``label`` of data.class_regex on the file name
              (AIST++: the music id, ``gBR_sBM_c01_d04_mBR0_ch01.mp4`` -> ``mBR0``)
    manifest  a CSV (header: path,label[,start,end]) or JSONL file of the same fields; paths
              relative to the manifest's folder; start / end (s) restrict the usable span

Every file is probed when the index is built: unreadable files, files without a video or audio
stream and videos shorter than one clip are skipped with a warning each and a count at the end,
so a bad file never stops an epoch halfway. Each item is one clip::

    {"video": float32 [F, 3, S, S] in [-1, 1], "audio": float32 [N] in [-1, 1],
     "label": int64 (-1 when unlabelled), "path": str, "start": float (s)}

with N = round(F / fps * sample_rate). ``preprocess`` decodes every video once into ``cache_dir``
(frames already on the clip grid and resized, audio resampled): training then reads arrays
instead of decoding mp4. A cache entry is keyed by the source file's path, size and mtime and
by the signal settings, so editing the file or the config never reads a stale entry.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmldm.config import DataConfig
from mmldm.console import progress
from mmldm.data.clips import (
    clip_starts,
    frames_to_tensor_layout,
    hflip,
    resize_frames,
)
from mmldm.data.media import MediaError, probe, read_media
from mmldm.errors import MMLDMError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".flv"}
SILENCE = 1e-5  # peak |x| below this is digital silence


class DatasetError(MMLDMError, ValueError):
    """The dataset as a whole cannot be built (missing folder, no usable clip, bad manifest)."""


@dataclass(frozen=True)
class VideoEntry:
    path: Path
    class_name: str | None
    span: tuple[float, float] | None = None  # manifest start / end (s)


@dataclass(frozen=True)
class ClipRef:
    video: int  # index into SoundingVideoDataset.videos
    start: float  # seconds from the start of the file


# --------------------------------------------------------------------------------------------
# Listing videos and classes
# --------------------------------------------------------------------------------------------


def _list_videos(root: Path) -> list[Path]:
    if not root.exists():
        raise DatasetError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    except PermissionError as err:
        raise DatasetError(f"{root}: cannot read the folder ({err})") from None
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"{root}: cannot read the folder (permission denied)")
    return [p for p in files if p.is_file()]


def read_manifest(path: Path) -> list[VideoEntry]:
    """The entries of a .csv / .jsonl manifest: ``path`` (relative to the manifest), optional
    ``label`` (or ``class``), ``start`` and ``end`` (s)."""
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found")
    rows: list[dict] = []
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}: line {number} is not JSON ({err})") from None
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise DatasetError(f"{path}: a manifest must be .csv or .jsonl")
    entries = []
    for number, row in enumerate(rows, 1):
        if not row.get("path"):
            raise DatasetError(f"{path}: entry {number} has no 'path'")
        label = row.get("label", row.get("class"))
        start, end = row.get("start"), row.get("end")
        span = None
        if start not in (None, "") or end not in (None, ""):
            try:
                span = (float(start or 0.0), float(end) if end not in (None, "") else float("inf"))
            except ValueError:
                raise DatasetError(f"{path}: entry {number} has a non-numeric start/end") from None
            if span[1] <= span[0]:
                raise DatasetError(f"{path}: entry {number} ends before it starts")
        video = Path(row["path"])
        entries.append(
            VideoEntry(
                path=video if video.is_absolute() else path.parent / video,
                class_name=str(label) if label not in (None, "") else None,
                span=span,
            )
        )
    return entries


def list_entries(source: Path, data: DataConfig) -> list[VideoEntry]:
    """The videos of a folder (``folder`` / ``regex`` layouts) or of a manifest file."""
    if data.layout == "manifest" or source.suffix.lower() in (".csv", ".jsonl"):
        return read_manifest(source)
    entries = []
    pattern = re.compile(data.class_regex) if data.layout == "regex" else None
    for path in _list_videos(source):
        if pattern is not None:
            match = pattern.search(path.name)
            label = match.group("label") if match else None
            if label is None:
                log.warning("%s: file name does not match data.class_regex; skipped", path)
                continue
        else:
            relative = path.relative_to(source)
            label = relative.parts[0] if len(relative.parts) > 1 else None
        entries.append(VideoEntry(path=path, class_name=label))
    return entries


def class_index(entries: list[VideoEntry], data: DataConfig) -> list[str]:
    """Class names in label order: data.classes if given, else the sorted names found."""
    found = sorted({e.class_name for e in entries if e.class_name is not None})
    names = list(data.classes) or found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"classes {unknown} are not in data.classes {names}")
    if data.num_classes and len(names) > data.num_classes:
        raise DatasetError(
            f"found {len(names)} classes ({', '.join(names[:12])}...) but data.num_classes="
            f"{data.num_classes}"
        )
    if data.num_classes and len(names) < data.num_classes:
        log.warning("found %d classes, data.num_classes=%d", len(names), data.num_classes)
    return names


# --------------------------------------------------------------------------------------------
# Decoding one clip or one whole video
# --------------------------------------------------------------------------------------------


def decode_span(
    path: Path, data: DataConfig, start: float, duration: float
) -> tuple[np.ndarray, np.ndarray]:
    """Frames on the clip grid, resized, and the matching audio of [start, start + duration).

    Returns:
        frames ``uint8 [round(duration * fps), S, S, 3]``, audio ``float32 [round(duration * sr)]``.
    Raises:
        MediaError for unreadable, truncated or too short files and silent audio.
    """
    media = read_media(
        path, sample_rate=data.sample_rate, start=start, duration=duration, grid_fps=data.fps
    )
    assert media.frames is not None and media.audio is not None
    frames = resize_frames(media.frames, data.resolution, data.resize)
    if float(np.abs(media.audio).max(initial=0.0)) < SILENCE:
        raise MediaError(path, f"silent audio in {start:.2f}-{start + duration:.2f}s")
    return frames, media.audio


def decode_frames(path: Path, data: DataConfig, start: float, duration: float) -> np.ndarray:
    """Frames only (the file may have no audio): ``uint8 [round(duration * fps), S, S, 3]``."""
    media = read_media(path, start=start, duration=duration, audio=False, grid_fps=data.fps)
    assert media.frames is not None
    return resize_frames(media.frames, data.resolution, data.resize)


def cache_key(path: Path, data: DataConfig, extent: tuple[float, float]) -> str:
    """Changes whenever the source file, its used extent or a setting that shapes the decoded
    arrays changes."""
    stat = path.stat()
    signal = (data.fps, data.resolution, data.resize, data.sample_rate)
    ident = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, signal, extent])
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


def _usable_clips(entry: VideoEntry, data: DataConfig) -> tuple[tuple[float, float], list[float]]:
    """The usable extent ``(lo, hi)`` (s) of a video and the start times (s, >= lo) of its clips.

    Raises:
        MediaError when the file is unreadable, lacks a video or audio stream, or its extent
        holds no whole clip.
    """
    info = probe(entry.path)
    if not info.has_video:
        raise MediaError(entry.path, "has no video stream")
    if not info.has_audio:
        raise MediaError(entry.path, "has no audio stream")
    lo, hi = entry.span or (0.0, info.duration)
    hi = min(hi, info.duration)
    starts = [lo + s for s in clip_starts(hi - lo, data.num_frames, data.fps, data.clip_stride)]
    if not starts:
        raise MediaError(
            entry.path,
            f"clip shorter than requested: {hi - lo:.2f}s usable, {data.clip_seconds:.2f}s needed",
        )
    return (lo, hi), starts


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class SoundingVideoDataset(Dataset):
    """Clips of sounding videos (see the module docstring for layouts and items).

    Args:
        source: a data folder, or a manifest (.csv / .jsonl).
        data: signal and layout settings.
        train: apply the training augmentation (horizontal flip with data.hflip_prob).
        cache_dir: read decoded videos from here when present (see :meth:`preprocess`).
    """

    def __init__(
        self,
        source: str | Path,
        data: DataConfig,
        *,
        train: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.source = Path(source)
        self.data = data
        self.train = train
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        entries = list_entries(self.source, data)
        self.classes = class_index(entries, data) if data.num_classes else []
        self.videos: list[VideoEntry] = []
        self.extents: list[tuple[float, float]] = []  # usable (start, end) s of each video
        self.clips: list[ClipRef] = []
        self.skipped: list[tuple[Path, str]] = []
        self.runtime_skips = 0
        for entry in entries:
            try:
                extent, starts = _usable_clips(entry, data)
            except MediaError as err:
                log.warning("skipping %s", err)
                self.skipped.append((entry.path, err.problem))
                continue
            self.videos.append(entry)
            self.extents.append(extent)
            self.clips += [ClipRef(len(self.videos) - 1, s) for s in starts]
        self._report_index(len(entries))

    def _report_index(self, num_entries: int) -> None:
        """Log what was indexed and why videos were skipped; raise DatasetError if no clip is
        left."""
        if self.skipped:
            reasons = Counter(problem.split(" (")[0].split(":")[0] for _, problem in self.skipped)
            log.warning(
                "%s: skipped %d of %d videos (%s)",
                self.source,
                len(self.skipped),
                num_entries,
                ", ".join(f"{n} {r}" for r, n in reasons.most_common()),
            )
        if not self.clips:
            raise DatasetError(
                f"{self.source}: no usable clip of {self.data.clip_seconds:.2f}s in "
                f"{num_entries} videos"
                + (f" ({len(self.skipped)} skipped, see the warnings)" if self.skipped else "")
            )
        log.info(
            "%s: %d clips from %d videos, %d classes",
            self.source,
            len(self.clips),
            len(self.videos),
            len(self.classes),
        )

    def __len__(self) -> int:
        return len(self.clips)

    def label_of(self, video: int) -> int:
        name = self.videos[video].class_name
        return self.classes.index(name) if self.classes and name is not None else -1

    # -- decoding ------------------------------------------------------------------------------

    def _cached(self, video: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = cache_key(self.videos[video].path, self.data, self.extents[video])
        entry = self.cache_dir / key
        return entry if (entry / "meta.json").is_file() else None

    def _load_clip(self, ref: ClipRef) -> tuple[np.ndarray, np.ndarray]:
        data = self.data
        cached = self._cached(ref.video)
        if cached is None:
            return decode_span(self.videos[ref.video].path, data, ref.start, data.clip_seconds)
        offset = ref.start - self.extents[ref.video][0]  # the cache starts at the extent's start
        first = int(round(offset * data.fps))
        a0 = int(round(offset * data.sample_rate))
        n = data.clip_samples
        frames = np.load(cached / "frames.npy", mmap_mode="r")[first : first + data.num_frames]
        audio = np.load(cached / "audio.npy", mmap_mode="r")[a0 : a0 + n]
        if len(frames) < data.num_frames or len(audio) < n:
            raise MediaError(self.videos[ref.video].path, "cache entry shorter than the clip")
        return np.array(frames), np.array(audio)

    def __getitem__(self, index: int) -> dict:
        # A file that decoded at indexing time but fails now (e.g. corrupt data in the middle)
        # is reported and replaced by the next clip, so one bad file cannot end an epoch.
        for attempt in range(len(self.clips)):
            ref = self.clips[(index + attempt) % len(self.clips)]
            try:
                frames, audio = self._load_clip(ref)
                break
            except MediaError as err:
                self.runtime_skips += 1
                log.warning("skipping clip %d (%s), using the next one", index + attempt, err)
        else:
            raise DatasetError(f"{self.source}: no clip could be decoded")
        if self.train and self.data.hflip_prob > 0 and torch.rand(()) < self.data.hflip_prob:
            frames = hflip(frames)
        n = self.data.clip_samples
        return {
            "video": torch.from_numpy(frames_to_tensor_layout(frames)),
            "audio": torch.from_numpy(np.ascontiguousarray(audio[:n], dtype=np.float32)),
            "label": torch.tensor(self.label_of(ref.video), dtype=torch.long),
            "path": str(self.videos[ref.video].path),
            "start": ref.start,
        }

    # -- cache ---------------------------------------------------------------------------------

    def preprocess(self, cache_dir: str | Path | None = None) -> int:
        """Decode every video once into ``cache_dir`` (default: the dataset's); returns how many
        entries were written. Entries already valid are kept; a video that fails is skipped."""
        if cache_dir is None and self.cache_dir is None:
            raise ValueError("preprocess needs a cache_dir")
        root = self.cache_dir = Path(cache_dir or self.cache_dir)  # type: ignore[arg-type]
        root.mkdir(parents=True, exist_ok=True)
        written = 0
        for video in progress(range(len(self.videos)), desc="decoding videos into the cache"):
            if self._cached(video) is not None:
                continue
            entry = self.videos[video]
            lo, hi = self.extents[video]
            duration = np.floor((hi - lo) * self.data.fps + 1e-6) / self.data.fps
            try:
                frames, audio = decode_span(entry.path, self.data, lo, duration)
            except MediaError as err:
                log.warning("not cached: %s", err)
                continue
            final = root / cache_key(entry.path, self.data, (lo, hi))
            tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            np.save(tmp / "frames.npy", frames)
            np.save(tmp / "audio.npy", audio.astype(np.float32))
            (tmp / "meta.json").write_text(json.dumps({"source": str(entry.path)}))
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            written += 1
        return written
