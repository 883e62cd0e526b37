"""Reading and writing sounding videos with PyAV (FFmpeg): frames, audio, mp4 and wav.

Conventions: frames are ``uint8 [T, H, W, 3]`` RGB; audio is ``float32 [N]`` mono in [-1, 1].
Time 0 is the first video frame; audio samples are placed on the same clock.
Every failure raises :class:`MediaError` naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile

from mmldm.errors import MMLDMError

log = logging.getLogger(__name__)


class MediaError(MMLDMError, ValueError):
    """A media file is missing, unreadable, truncated, or lacks what was asked of it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass
class MediaInfo:
    """What a file holds, read from its headers."""

    path: Path
    duration: float  # seconds of video (of audio for audio-only files)
    fps: float | None
    width: int | None
    height: int | None
    num_frames: int | None  # from the container; None when it does not say
    has_video: bool
    has_audio: bool
    audio_rate: int | None


@dataclass
class Media:
    """Decoded frames and audio of (a span of) one file."""

    path: Path
    frames: np.ndarray | None  # uint8 [T, H, W, 3]
    frame_times: np.ndarray | None  # float64 [T], seconds
    fps: float | None
    audio: np.ndarray | None  # float32 [N] mono, sample k at audio_start + k / sample_rate
    sample_rate: int | None
    audio_start: float = 0.0  # seconds


def _iso_bmff_problem(path: Path) -> str | None:
    """For mp4 / mov files: walk the top-level boxes and report one that the file cuts off.

    FFmpeg opens such a file when the index (moov) survived and then reports whatever it
    finds, e.g. a missing audio stream; checking the box sizes names the real problem.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(8)[4:8] != b"ftyp":
            return None
        pos = 0
        while pos < size:
            fh.seek(pos)
            header = fh.read(8)
            if len(header) < 8:
                return f"truncated: a box header at byte {pos} is cut off"
            length, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if length == 1:  # 64-bit size follows
                large = fh.read(8)
                if len(large) < 8:
                    return f"truncated: the '{kind}' box header at byte {pos} is cut off"
                length = int.from_bytes(large, "big")
            elif length == 0:  # the box extends to the end of the file
                return None
            if length < 8:
                return f"corrupt: box '{kind}' at byte {pos} has an invalid size {length}"
            if pos + length > size:
                return (
                    f"truncated: the '{kind}' box ends at byte {pos + length}, the file at {size}"
                )
            pos += length
    return None


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise MediaError(path, "file not found")
    if path.is_dir():
        raise MediaError(path, "is a folder, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file")
    problem = _iso_bmff_problem(path)
    if problem:
        raise MediaError(path, problem)
    try:
        return av.open(str(path), "r")
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(path, f"cannot be opened as a media file ({err})") from None


def _first_streams(
    container: av.container.InputContainer,
) -> tuple[av.stream.Stream | None, av.stream.Stream | None]:
    """The first video and the first audio stream of a container; None where there is none."""
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    return video, audio


def probe(path: str | Path) -> MediaInfo:
    path = Path(path)
    with _open(path) as container:
        video, audio = _first_streams(container)
        if video is None and audio is None:
            raise MediaError(path, "has neither a video nor an audio stream")
        main = video or audio
        duration = None
        if main.duration is not None and main.time_base is not None:
            duration = float(main.duration * main.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        fps = float(video.average_rate) if video is not None and video.average_rate else None
        return MediaInfo(
            path=path,
            duration=duration or 0.0,
            fps=fps,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            num_frames=(video.frames or None) if video is not None else None,
            has_video=video is not None,
            has_audio=audio is not None,
            audio_rate=audio.codec_context.sample_rate if audio is not None else None,
        )


def read_media(
    path: str | Path,
    *,
    sample_rate: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
    video: bool = True,
    audio: bool = True,
    grid_fps: float | None = None,
) -> Media:
    """Decode the frames and the first audio track (resampled, mono) of a span of a file.

    Args:
        sample_rate: resample the audio to this rate (required when ``audio``).
        start, duration: the span in seconds; ``duration=None`` reads to the end.
        video, audio: which streams are required; a missing one raises MediaError.
        grid_fps: return the frames shown at ``start + k / grid_fps`` (the source's frame rate
            converted while decoding, so only the kept frames are held in memory).

    A span reaching past the end of the file raises MediaError ("clip shorter than
    requested"), as does a file whose decodable frames stop well before its stated length.
    """
    path = Path(path)
    if audio and not sample_rate:
        raise ValueError("read_media: sample_rate is required to read audio")
    with _open(path) as container:
        vstream, astream = _wanted_streams(path, container, video, audio)
        origin = _stream_origin(vstream if vstream is not None else astream)
        end = None if duration is None else start + duration
        if start > 0:
            _seek(path, container, vstream if video else astream, start, origin)
        src_fps = (
            float(vstream.average_rate) if vstream is not None and vstream.average_rate else None
        )
        collector = _FrameCollector(start, end, grid_fps, src_fps) if video else None
        sound = _AudioCollector(sample_rate, end) if audio else None
        streams = [s for s, want in ((vstream, video), (astream, audio)) if want]
        _decode(path, container, streams, origin, collector, sound)
        media = Media(
            path=path,
            frames=None,
            frame_times=None,
            fps=None,
            audio=None,
            sample_rate=sample_rate if audio else None,
        )
        if collector is not None:
            media.fps = grid_fps or src_fps
            media.frames, media.frame_times = _validated_frames(
                path, collector, vstream, media.fps, start, end, grid_fps
            )
        if sound is not None:
            media.audio, media.audio_start = _validated_audio(path, sound, sample_rate, start, end)
        return media


def _wanted_streams(
    path: Path, container: av.container.InputContainer, video: bool, audio: bool
) -> tuple[av.stream.Stream | None, av.stream.Stream | None]:
    """The first video and audio streams; a wanted one that is missing raises MediaError."""
    vstream, astream = _first_streams(container)
    if video and vstream is None:
        raise MediaError(path, "has no video stream")
    if audio and astream is None:
        raise MediaError(path, "has no audio stream")
    return vstream, astream


def _seek(
    path: Path,
    container: av.container.InputContainer,
    anchor: av.stream.Stream,
    start: float,
    origin: float,
) -> None:
    """Jump to the keyframe at or before ``start`` (s on the video clock) of ``anchor``."""
    try:
        container.seek(int((start + origin) / anchor.time_base), stream=anchor, backward=True)
    except av.error.FFmpegError as err:
        raise MediaError(path, f"cannot seek to {start:.2f}s ({err})") from None


def _decode(
    path: Path,
    container: av.container.InputContainer,
    streams: list[av.stream.Stream],
    origin: float,
    collector: _FrameCollector | None,
    sound: _AudioCollector | None,
) -> None:
    """Demux ``streams`` once, handing each decoded frame to the collector of its kind.

    Video and audio are interleaved in the file, so both are decoded in the same pass; a
    collector that is None (stream not wanted) or already complete gets no more frames, and
    decoding stops once neither wants more. Frame times are on the video clock (``- origin``).
    """
    video_done, audio_done = collector is None, sound is None
    try:
        for packet in container.demux(streams):
            if video_done and audio_done:
                break
            for frame in packet.decode():
                t = (frame.time if frame.time is not None else 0.0) - origin
                if isinstance(frame, av.VideoFrame):
                    if not video_done:
                        assert collector is not None
                        video_done = not collector.add(frame, t)
                elif not audio_done:
                    assert sound is not None
                    audio_done = not sound.add(frame, t)
        if sound is not None:
            sound.flush()
    except av.error.FFmpegError as err:
        raise MediaError(path, f"corrupt or truncated data while decoding ({err})") from None


def _stream_origin(stream: av.stream.Stream | None) -> float:
    if stream is None or stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


class _FrameCollector:
    """Keeps decoded frames of [start, end), either all of them or those on a time grid.

    On a grid, the frame shown at grid time g is the last one that starts at or before g; a
    frame is known to cover [its time, the next frame's time), so each frame is held only until
    the next one arrives.
    """

    def __init__(self, start: float, end: float | None, grid_fps: float | None, src_fps):
        self.start, self.end, self.grid_fps = start, end, grid_fps
        self.src_step = 1.0 / src_fps if src_fps else 0.0
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.pending: tuple[av.VideoFrame, float] | None = None
        self.next_k = 0

    def _emit(self, until: float) -> None:
        """Assign the pending frame to every grid time before ``until``."""
        assert self.pending is not None and self.grid_fps is not None
        image = None
        while True:
            g = self.start + self.next_k / self.grid_fps
            if g >= until - 1e-4 or (self.end is not None and g >= self.end - 1e-6):
                return
            if image is None:
                image = self.pending[0].to_ndarray(format="rgb24")
            self.frames.append(image)
            self.times.append(g)
            self.next_k += 1

    def add(self, frame: av.VideoFrame, t: float) -> bool:
        """Take one decoded frame; False once the span is complete."""
        if self.grid_fps is None:
            if self.end is not None and t >= self.end - 1e-6:
                return False
            if t >= self.start - 0.5 * self.src_step:
                self.frames.append(frame.to_ndarray(format="rgb24"))
                self.times.append(t)
            return True
        if self.pending is not None:
            self._emit(t)
        self.pending = (frame, t)
        return self.end is None or t < self.end - 1e-6

    def finish(self) -> tuple[list[np.ndarray], list[float]]:
        if self.grid_fps is not None and self.pending is not None:
            self._emit(self.pending[1] + (self.src_step or 1.0 / self.grid_fps))
            self.pending = None
        return self.frames, self.times


class _AudioCollector:
    """Resampled mono chunks of the first audio track, from the seek point to just past ``end``.

    ``chunks`` are ``float32 [n]`` arrays in (about) [-1, 1]; ``start`` is the time (s, video
    clock) of the first decoded frame, i.e. of the first sample of the first chunk.
    """

    def __init__(self, sample_rate: int | None, end: float | None) -> None:
        # keep the channels through resampling, then average them: FFmpeg's own downmix
        # scales by 1/sqrt(2) per channel, which would make a centred stereo source louder
        self.resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        self.end = end
        self.chunks: list[np.ndarray] = []
        self.start: float | None = None

    def add(self, frame: av.AudioFrame, t: float) -> bool:
        """Take one decoded frame starting at ``t`` s; False once past the span."""
        for out in self.resampler.resample(frame):
            if self.start is None:
                self.start = t
            self.chunks.append(out.to_ndarray().mean(axis=0))
        return not (self.end is not None and t > self.end + 0.1)

    def flush(self) -> None:
        """Collect the samples still held inside the resampler."""
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().mean(axis=0))


def _validated_frames(
    path: Path,
    collector: _FrameCollector,
    vstream: av.stream.Stream,
    fps: float | None,
    start: float,
    end: float | None,
    grid_fps: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The collected frames ``uint8 [T, H, W, 3]`` and their times ``float64 [T]`` (s).

    Raises MediaError when no frame decoded or the frames stop short (see _check_complete).
    """
    frames, times = collector.finish()
    if not frames:
        raise MediaError(path, f"no decodable video frames at {start:.2f}s")
    stacked = np.stack(frames)
    frame_times = np.asarray(times, dtype=np.float64)
    _check_complete(path, vstream, frame_times, fps, start, end, grid_fps)
    return stacked, frame_times


def _validated_audio(
    path: Path,
    sound: _AudioCollector,
    sample_rate: int | None,
    start: float,
    end: float | None,
) -> tuple[np.ndarray, float]:
    """The collected audio cut to [start, end): ``float32 [N]`` in [-1, 1] and its start (s).

    Raises MediaError when the stream held no samples or does not cover the span.
    """
    if not sound.chunks:
        raise MediaError(path, "the audio stream holds no samples")
    # lossy codecs overshoot full scale a little; every consumer expects [-1, 1]
    samples = np.clip(np.concatenate(sound.chunks), -1.0, 1.0).astype(np.float32)
    return _cut_audio(path, samples, sound.start or 0.0, sample_rate, start, end)


def _check_complete(path, vstream, times, fps, start, end, grid_fps) -> None:
    step = 1.0 / fps if fps else 0.0
    last = float(times[-1]) + step
    if end is not None:
        if last < end - 0.5 * step - 1e-6:
            raise MediaError(
                path,
                f"clip shorter than requested: {start:.2f}-{end:.2f}s asked, frames end at "
                f"{last:.2f}s",
            )
        return
    stated = vstream.frames or 0
    if grid_fps is not None and vstream.average_rate:  # count in source frames
        stated = stated * grid_fps / float(vstream.average_rate)
    decoded = len(times) + (round(start * fps) if fps else 0)
    if stated and decoded < 0.98 * stated - 2:
        raise MediaError(
            path, f"truncated: the container states {stated} frames, only {decoded} decode"
        )


def _cut_audio(path, samples, audio_start, rate, start, end) -> tuple[np.ndarray, float]:
    """Samples of [start, end) on the video clock; short gaps at the edges are zero-padded."""
    first = int(round((start - audio_start) * rate))
    if end is None:
        if first > 0:
            samples = samples[first:]
        elif first < 0:
            samples = np.concatenate([np.zeros(-first, np.float32), samples])
        if samples.size == 0:
            raise MediaError(path, "zero-length audio")
        return samples, start
    count = int(round((end - start) * rate))
    have = samples[max(first, 0) : first + count]
    pad_front = max(-first, 0)
    pad_back = count - pad_front - have.size
    tolerance = int(0.05 * rate) + 1024  # an AAC frame of priming or padding
    if pad_back > tolerance or pad_front > tolerance:
        raise MediaError(
            path,
            f"clip shorter than requested: audio covers {audio_start:.2f}-"
            f"{audio_start + samples.size / rate:.2f}s, {start:.2f}-{end:.2f}s asked",
        )
    out = np.concatenate(
        [np.zeros(pad_front, np.float32), have, np.zeros(max(pad_back, 0), np.float32)]
    )
    return out[:count], start


def read_audio(
    path: str | Path, sample_rate: int, *, start: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """Mono float32 audio of a wav or of any file with an audio track, at ``sample_rate``."""
    return read_media(
        path, sample_rate=sample_rate, start=start, duration=duration, video=False
    ).audio  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextmanager
def _written_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` when the block
    succeeds and is removed either way, so that a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """``obj`` as JSON (with a final newline) in ``path``, atomically (a temporary file beside
    it, renamed into place)."""
    path = Path(path)
    with _written_atomically(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent) + "\n")
    return path


def _clipped_mono(audio: np.ndarray) -> np.ndarray:
    """``float32 [N]`` audio clipped to [-1, 1]."""
    return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)


def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 frames pass through; float frames in [-1, 1] are mapped to [0, 255]."""
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.clip(np.round((frames.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    crf: int = 18,
) -> Path:
    """Write an mp4: H.264 (yuv420p) video and, when given, AAC mono audio.

    Args:
        frames: ``[T, H, W, 3]`` uint8, or float in [-1, 1]; H and W must be even.
        audio: ``[N]`` float in [-1, 1] (clipped); its duration should match T / fps.

    The file is written beside its destination and renamed into place, so that a reader
    never sees a half-written video. ``+faststart`` puts the index first for web players.
    """
    path = Path(path)
    frames = to_uint8_frames(frames)
    _check_video_args(path, frames, audio, sample_rate)
    with _written_atomically(path) as tmp:
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            # every stream is added before the first packet is muxed (that writes the header)
            vstream = _add_video_stream(out, rate, frames.shape[2], frames.shape[1], crf)
            astream = None
            if audio is not None:
                astream = out.add_stream("aac", rate=sample_rate, layout="mono")
                astream.bit_rate = 128_000
            _encode_frames(out, vstream, frames, rate)
            if astream is not None:
                assert audio is not None and sample_rate is not None
                _encode_audio(out, astream, _clipped_mono(audio), sample_rate)
    return path


def _check_video_args(
    path: Path, frames: np.ndarray, audio: np.ndarray | None, sample_rate: int | None
) -> None:
    """Raise ValueError unless frames are ``uint8 [T>0, H, W, 3]`` with even H and W, and a
    sample rate comes with any audio."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"write_video {path}: frames must be [T, H, W, 3], got {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"write_video {path}: H.264 needs even sizes, got {width}x{height}")
    if audio is not None and not sample_rate:
        raise ValueError(f"write_video {path}: sample_rate is required with audio")


def _add_video_stream(
    out: av.container.OutputContainer, rate: Fraction, width: int, height: int, crf: int
) -> av.stream.Stream:
    """An H.264 yuv420p stream of ``width`` x ``height`` at ``rate`` frames/s, quality ``crf``."""
    vstream = out.add_stream("libx264", rate=rate)
    vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
    # one encoder thread: threaded x264 gave different bytes (and decoded frames) for
    # the same input, and the same seed must give the same files
    vstream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
    vstream.codec_context.thread_count = 1
    return vstream


def _encode_frames(
    out: av.container.OutputContainer, vstream: av.stream.Stream, frames: np.ndarray, rate: Fraction
) -> None:
    """Encode and mux ``uint8 [T, H, W, 3]`` RGB frames, frame i at i / rate s, then flush."""
    for i, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = i
        frame.time_base = 1 / rate
        out.mux(vstream.encode(frame))
    out.mux(vstream.encode(None))


def _encode_audio(
    out: av.container.OutputContainer, astream: av.stream.Stream, wave: np.ndarray, rate: int
) -> None:
    """Encode and mux ``float32 [N]`` mono audio in [-1, 1] at ``rate`` Hz, then flush."""
    chunk = 1024
    for offset in range(0, wave.size, chunk):
        piece = np.ascontiguousarray(wave[offset : offset + chunk][None, :])
        frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = offset
        frame.time_base = Fraction(1, rate)
        out.mux(astream.encode(frame))
    out.mux(astream.encode(None))


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM wav of mono float audio in [-1, 1] (clipped), written atomically."""
    path = Path(path)
    with _written_atomically(path) as tmp:
        wave = _clipped_mono(audio)
        soundfile.write(str(tmp), wave, sample_rate, subtype="PCM_16", format="WAV")
    return path
