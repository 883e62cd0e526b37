"""Detectors that recover the synthetic dataset's ground truth from frames and waveforms.

They work on decoded arrays (real files or generated samples alike) and are meant to survive
blur, noise, colour shifts and lossy compression:

* :func:`detect_video_class`: hue of the object (pixels far from the background colour),
* :func:`detect_audio_class`: median peak frequency of the tone -> nearest class pitch,
* :func:`detect_positions`: the object's centre track (any family),
* ball family: :func:`detect_bounces` (turning points of the track), :func:`detect_clicks`
  (onsets of broadband bursts);
* pulse family: :func:`detect_swells` (jumps of the object's size), :func:`detect_onsets`
  (rises of the loudness);
* :func:`detect_video_events` / :func:`detect_audio_events`: the family's events;
* :func:`match_events`: greedy one-to-one matching of event times.

Accepted frame layouts (numpy arrays or torch tensors, any device):

* ``uint8 [T, H, W, 3]`` RGB in 0..255,
* float ``[T, H, W, 3]`` in [-1, 1] (channels last),
* float ``[T, 3, H, W]`` in [-1, 1] (channels first, as the models produce),
* a single frame ``[H, W, 3]`` / ``[3, H, W]`` counts as T = 1.

Channels-last wins when both the second and the last axis have size 3.
Accepted audio: float ``[N]`` (or ``[1, N]``) mono in [-1, 1], numpy or torch.
"""

from __future__ import annotations

import numpy as np

from mmldm.synthetic.classes import check_family, class_table

_MIN_CONTRAST = 40.0  # 0..255 scale: weaker peaks are noise, not the object
_END_GUARD = 0.01  # seconds at the end of a waveform where onsets are ignored


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here)
        x = x.detach().to("cpu")
        if str(x.dtype) != "torch.uint8":
            x = x.float()  # also bf16 / fp16, which numpy lacks
        return x.numpy()
    return np.asarray(x)


def frames_to_float(frames) -> np.ndarray:
    """Any accepted frame layout -> float32 ``[T, H, W, 3]`` in 0..255."""
    arr = _as_numpy(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, 3] or [T, 3, H, W], got shape {arr.shape}")
    if arr.shape[-1] != 3:
        if arr.shape[1] != 3:
            raise ValueError(f"frames need 3 colour channels, got shape {arr.shape}")
        arr = arr.transpose(0, 2, 3, 1)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32)
    return (np.clip(arr.astype(np.float32), -1.0, 1.0) + 1.0) * 127.5


def _audio_to_float(wave) -> np.ndarray:
    arr = _as_numpy(wave).astype(np.float64)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"audio must be mono [N], got shape {arr.shape}")
    return arr


def _box3(img: np.ndarray) -> np.ndarray:
    """3x3 mean over the last two axes (edge-padded): averages pixel noise away."""
    padded = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    h, w = img.shape[-2:]
    out = np.zeros_like(img)
    for di in range(3):
        for dj in range(3):
            out += padded[..., di : di + h, dj : dj + w]
    return out / 9.0


def _foreground(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel difference from each frame's background and its smoothed strength.

    rgb: float ``[T, H, W, 3]`` 0..255. The background is each frame's median colour (the object
    covers a few % of the frame). Returns diff ``[T, H, W, 3]`` and strength ``[T, H, W]`` (the
    3x3-smoothed Euclidean colour distance to the background, 0..~441).
    """
    background = np.median(rgb.reshape(len(rgb), -1, 3), axis=1)
    diff = rgb - background[:, None, None, :]
    strength = _box3(np.sqrt((diff * diff).sum(-1)))
    return diff, strength


def _hue(vec: np.ndarray) -> np.ndarray:
    """Hue angle (radians) of RGB vectors ``[..., 3]`` in the opponent plane.

    Invariant to adding grey and to positive scaling, so a ball blended with (or measured
    against) a grey background keeps its hue; equals the HSV hue on the primaries and
    secondaries.
    """
    r, g, b = vec[..., 0], vec[..., 1], vec[..., 2]
    return np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)


def _chroma(vec: np.ndarray) -> np.ndarray:
    r, g, b = vec[..., 0], vec[..., 1], vec[..., 2]
    return 0.5 * np.hypot(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)


def detect_video_class(frames, num_classes: int, family: str = "ball") -> int:
    """Class of the object from its colour: the nearest class hue, by majority over frames.

    Args:
        frames: see the module docstring for the accepted layouts.
        num_classes: K; classes as in :func:`mmldm.synthetic.classes.class_table`.
        family: whose class table.

    In each frame the pixels whose (smoothed) distance to the background colour exceeds 60%
    of the frame's maximum are the object; the mean of their colour minus the background gives
    a hue, mapped to the class of the nearest hue (circularly). Frames without a clear object
    or without colour (grey blobs) do not vote; ties go to the class with more chroma.
    Returns -1 when no frame votes.
    """
    rgb = frames_to_float(frames)
    diff, strength = _foreground(rgb)
    class_hues = np.radians([c["hue"] for c in class_table(num_classes, family)])
    votes = np.zeros(num_classes)
    weight = np.zeros(num_classes)
    for t in range(len(rgb)):
        peak = strength[t].max()
        if peak < _MIN_CONTRAST:
            continue
        mask = strength[t] > 0.6 * peak
        colour = diff[t][mask].mean(axis=0)
        chroma = float(_chroma(colour))
        if chroma < 0.25 * _MIN_CONTRAST:
            continue
        gap = np.angle(np.exp(1j * (_hue(colour) - class_hues)))  # wrapped to (-pi, pi]
        k = int(np.argmin(np.abs(gap)))
        votes[k] += 1
        weight[k] += chroma
    if votes.max() == 0:
        return -1
    best = np.flatnonzero(votes == votes.max())
    return int(best[np.argmax(weight[best])])


def _frame_signal(wave: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Overlapping frames ``[M, length]`` of a signal (zero-padded to at least one frame)."""
    if wave.size < length:
        wave = np.pad(wave, (0, length - wave.size))
    count = 1 + (wave.size - length) // hop
    index = np.arange(length)[None, :] + hop * np.arange(count)[:, None]
    return wave[index]


def dominant_pitch(wave, sample_rate: int, fmin: float = 60.0, fmax: float = 8000.0) -> float:
    """Median over the clip of the per-frame spectral peak frequency (Hz); NaN if silent.

    Frames of ~128 ms (Hann), a quarter overlap; frames quieter than 10% of the loudest frame's
    RMS are skipped; the peak is refined by parabolic interpolation of the log magnitude.
    The median is taken in log frequency, so short clicks and a bending pitch do not move it.
    """
    x = _audio_to_float(wave)
    n_fft = 1 << int(np.ceil(np.log2(0.128 * sample_rate)))
    frames = _frame_signal(x, n_fft, n_fft // 4)
    rms = np.sqrt((frames**2).mean(axis=1))
    if rms.max() <= 1e-6:
        return float("nan")
    frames = frames[rms > 0.1 * rms.max()] * np.hanning(n_fft)
    mag = np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-9)
    fmax = min(fmax, 0.45 * sample_rate)
    lo, hi = max(1, int(fmin * n_fft / sample_rate)), int(fmax * n_fft / sample_rate)
    band = mag[:, lo:hi]
    k = np.argmax(band, axis=1) + lo
    rows = np.arange(len(k))
    left, mid, right = (
        mag[rows, k - 1],
        mag[rows, k],
        mag[rows, np.minimum(k + 1, mag.shape[1] - 1)],
    )
    denom = left - 2.0 * mid + right
    offset = np.where(
        np.abs(denom) > 1e-12, 0.5 * (left - right) / np.where(denom == 0, 1, denom), 0
    )
    freqs = (k + np.clip(offset, -0.5, 0.5)) * sample_rate / n_fft
    return float(2.0 ** np.median(np.log2(freqs)))


def detect_audio_class(wave, sample_rate: int, num_classes: int, family: str = "ball") -> int:
    """Class of a waveform: its dominant pitch -> the class with the nearest base pitch.

    Args:
        wave: float ``[N]`` mono in [-1, 1] (numpy or torch).
        sample_rate: Hz.
        num_classes: K; the class pitch ranges are disjoint, decision boundaries lie halfway
            between base pitches in log frequency. Returns -1 for silence.
        family: whose class table.
    """
    f = dominant_pitch(wave, sample_rate)
    if not np.isfinite(f):
        return -1
    bases = np.log2([c["base_pitch_hz"] for c in class_table(num_classes, family)])
    return int(np.argmin(np.abs(np.log2(f) - bases)))


def detect_positions(frames) -> np.ndarray:
    """Object centre (x, y) in pixels per frame: float64 ``[T, 2]``, NaN where none is found.

    The strength-weighted centroid (strength above half its peak) in a window around the
    frame's strongest foreground point; a symmetric blur or noise leave it unbiased.
    Pixel centres are at (j + 0.5, i + 0.5), as in :mod:`mmldm.synthetic.families`.
    """
    rgb = frames_to_float(frames)
    _, strength = _foreground(rgb)
    num, height, width = strength.shape
    half = max(3, int(round(0.3 * min(height, width))))  # > 2 ball radii, > a swollen pulse square
    out = np.full((num, 2), np.nan)
    for t in range(num):
        s = strength[t]
        i, j = np.unravel_index(int(np.argmax(s)), s.shape)
        peak = s[i, j]
        if peak < _MIN_CONTRAST:
            continue
        i0, i1 = max(0, i - half), min(height, i + half + 1)
        j0, j1 = max(0, j - half), min(width, j + half + 1)
        w = np.clip(s[i0:i1, j0:j1] - 0.5 * peak, 0.0, None)
        total = w.sum()
        ys = np.arange(i0, i1) + 0.5
        xs = np.arange(j0, j1) + 0.5
        out[t] = ((w.sum(0) * xs).sum() / total, (w.sum(1) * ys).sum() / total)
    return out


def _turning_points(p: np.ndarray, min_step: float) -> list[float]:
    """Sub-frame times (in frames) where a 1-D track reverses direction.

    Steps smaller than ``min_step`` have no sign (the step across a bounce can be ~0); a
    reversal between two signed steps is placed at the extreme frame in between, refined with
    a V-shaped fit: for a track ``w - s |t - tb|``, ``tb = t + (p[t+1] - p[t-1]) / (2 s)`` with
    ``s = |p[t] - farther neighbour|``.
    """
    steps = np.diff(p)
    signs = np.where(np.abs(steps) >= min_step, np.sign(steps), 0.0)
    signs[~np.isfinite(steps)] = 0.0
    signed = np.flatnonzero(signs)
    times = []
    for a, b in zip(signed[:-1], signed[1:], strict=True):
        if signs[a] == signs[b]:
            continue
        direction = signs[a]  # +1: a maximum, -1: a minimum
        candidates = np.arange(a + 1, b + 1)  # frames between the two signed steps
        values = direction * p[candidates]
        if not np.isfinite(values).any():
            continue
        t = int(candidates[np.nanargmax(values)])
        tb = float(t)
        if 0 < t < len(p) - 1 and np.isfinite(p[t - 1 : t + 2]).all():
            before, after = p[t - 1], p[t + 1]
            s = direction * (p[t] - (min(before, after) if direction > 0 else max(before, after)))
            if s > 0:
                tb += float(np.clip((after - before) / (2.0 * s) * direction, -0.5, 0.5))
        times.append(tb)
    return times


def detect_bounces(frames, fps: float, positions: np.ndarray | None = None) -> np.ndarray:
    """Wall-bounce times (seconds, increasing) from reversals of the ball's centre track.

    Args:
        frames: see the module docstring (ignored when ``positions`` is given).
        fps: frame rate; frame t is at time t / fps.
        positions: optional ``[T, 2]`` track from :func:`detect_positions`.

    A reversal needs a frame on each side, so bounces within about one frame of the clip's
    start or end cannot be seen. Precision is a fraction of a frame on clean tracks; steps under
    max(0.15 px, 20% of the median step of that axis) count as no motion.
    Returns float64 ``[B]``; x and y bounces are merged (a corner gives two close times).
    """
    track = detect_positions(frames) if positions is None else np.asarray(positions, float)
    times: list[float] = []
    for axis in range(2):
        p = track[:, axis]
        steps = np.abs(np.diff(p))
        steps = steps[np.isfinite(steps)]
        if steps.size < 2:
            continue
        min_step = max(0.15, 0.2 * float(np.median(steps)))
        times += _turning_points(p, min_step)
    return np.sort(np.asarray(times, np.float64)) / fps


def _short_frames(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, int]:
    """4 ms frames every 1 ms (at least 16 samples, hop at least 1) of a signal ``[N]``:
    frames ``[M, length]``, length and hop in samples; frame m is centred on
    ``(m * hop + length / 2) / sample_rate`` seconds."""
    length = max(16, int(round(0.004 * sample_rate)))
    hop = max(1, int(round(0.001 * sample_rate)))
    return _frame_signal(x, length, hop), length, hop


def _run_starts(mask: np.ndarray) -> np.ndarray:
    """Indices ``[R]`` where a run of True starts in a boolean ``[M]``, increasing."""
    return np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))


def _first_of_clusters(times, min_gap: float, duration: float) -> np.ndarray:
    """The first of each cluster of event times (s, in detection order): float64 ``[E]``.

    A time within ``min_gap`` of the previous one (kept or not) continues its cluster. The
    first time in the last ``_END_GUARD`` seconds of the ``duration``-second signal ends the
    search: a step where a truncated or zero-padded signal ends, not an event.
    """
    onsets: list[float] = []
    last = None
    for t in times:
        if t > duration - _END_GUARD:
            break
        if last is None or t - last >= min_gap:
            onsets.append(t)
        last = t
    return np.asarray(onsets, np.float64)


def _broadband_level(frames: np.ndarray) -> np.ndarray:
    """Level (dB, ``[M]``) of windowed frames ``[M, L]``: the median magnitude over frequency
    (without DC), which a tone leaves alone and a click raises."""
    mag = np.abs(np.fft.rfft(frames, axis=1))[:, 1:]  # without DC
    return 20.0 * np.log10(np.median(mag, axis=1) + 1e-9)


def _onset_frame(level: np.ndarray, k: int, reach: int, threshold: float, onset_db: float) -> float:
    """Sub-frame index where the click crossing ``threshold`` (dB) at frame ``k`` starts: where
    the level first comes within ``onset_db`` of its loudest over the next ``reach`` frames
    (or reaches the threshold, if higher), linearly interpolated between frames."""
    window = level[k : k + reach]
    target = max(float(window.max()) - onset_db, threshold)
    j = k + int(np.argmax(window >= target))  # the first frame that reaches the target
    position = float(j)
    if j > 0 and level[j - 1] < target:  # interpolate the crossing between j - 1 and j
        position = j - 1 + (target - level[j - 1]) / (level[j] - level[j - 1])
    return position


def detect_clicks(
    wave,
    sample_rate: int,
    *,
    min_gap: float = 0.05,
    min_rise_db: float = 8.0,
    drop_db: float = 15.0,
    onset_db: float = 12.0,
) -> np.ndarray:
    """Onset times (seconds, increasing) of short broadband bursts over a tonal background.

    Args:
        wave: float ``[N]`` mono in [-1, 1] (numpy or torch).
        sample_rate: Hz.
        min_gap: seconds; crossings closer than this to the previous crossing (kept or not)
            continue its cluster, which gives one onset: bounces closer than ``min_gap`` to
            the one before give no click of their own.
        min_rise_db: the least rise over the clip's floor that counts as a click.
        drop_db: the detection threshold lies at most this many dB below the loudest level.
        onset_db: the onset is where the level comes within this many dB of the click's peak.

    The level is the median magnitude over frequency of 4 ms Hann frames every 1 ms: a tone
    fills a few bins and leaves the median alone, a click raises every bin. A click is found
    where the level crosses ``max(floor + min_rise_db, loudest - drop_db)`` dB, the floor
    being the clip's median level. The threshold relative to the loudest rejects the broadband
    bursts of AAC coding noise (up to ~0.55 of the range over high tones; clicks reach >= 0.8).
    The onset is then placed where the level first comes within ``onset_db`` of the loudest
    level of the next 30 ms (or reaches the threshold, if higher); this skips the quieter
    pre-echo that AAC spreads over ~15 ms before a transient, and keeps the first of two
    overlapping clicks. Times are (linearly interpolated) frame centres, 0.5-3 ms before the
    true onset on clean or AAC audio.

    Returns float64 ``[C]``.
    """
    x = _audio_to_float(wave)
    frames, length, hop = _short_frames(x, sample_rate)
    level = _broadband_level(frames * np.hanning(length))
    floor, loudest = float(np.median(level)), float(level.max())
    threshold = max(floor + min_rise_db, loudest - drop_db)
    if loudest < threshold:
        return np.zeros(0)
    reach = max(1, int(round(0.03 * sample_rate / hop)))
    times = (
        (_onset_frame(level, k, reach, threshold, onset_db) * hop + 0.5 * length) / sample_rate
        for k in _run_starts(level >= threshold)
    )
    # A crossing within min_gap of the previous one (kept or not) continues its cluster.
    return _first_of_clusters(times, min_gap, x.size / sample_rate)


def detect_object_sizes(frames) -> np.ndarray:
    """The object's size per frame: sqrt of the area (px) whose foreground strength exceeds
    half the frame's peak; float64 ``[T]``, NaN where no object is found."""
    _, strength = _foreground(frames_to_float(frames))
    peak = strength.reshape(len(strength), -1).max(axis=1)
    area = (strength > 0.5 * peak[:, None, None]).sum(axis=(1, 2)).astype(np.float64)
    return np.where(peak >= _MIN_CONTRAST, np.sqrt(area), np.nan)


def detect_swells(frames, fps: float, min_ratio: float = 1.12) -> np.ndarray:
    """Times (seconds, increasing) at which the object suddenly grows (pulse family).

    A swell is a frame whose size (:func:`detect_object_sizes`) is at least ``min_ratio``
    times the previous frame's; rises on consecutive frames count once. The event lies
    between the two frames, so it is placed half a frame before the grown one (error at most
    half a frame); the first frame cannot show one. Returns float64 ``[E]``.
    """
    size = detect_object_sizes(frames)
    with np.errstate(invalid="ignore", divide="ignore"):
        rising = size[1:] >= min_ratio * size[:-1]  # NaN compares False
    starts = _run_starts(rising) + 1
    return (starts - 0.5) / fps


def detect_onsets(
    wave,
    sample_rate: int,
    *,
    rise_db: float = 9.0,
    lookback: float = 0.06,
    near_peak_db: float = 10.0,
    min_gap: float = 0.1,
    start_guard: float = 0.02,
) -> np.ndarray:
    """Onset times (seconds, increasing) of notes: sudden rises of loudness (pulse family).

    The level is the RMS in dB of 4 ms frames every 1 ms. An onset is where the level first
    rises ``rise_db`` above its minimum over the preceding ``lookback`` seconds and, within
    the next 30 ms, comes within ``near_peak_db`` of the clip's loudest level (a note, not a
    flutter of the quiet background that a vocoder may add); rises closer than ``min_gap``
    to the previous one continue it. The first ``start_guard`` seconds (a fade-in) and the
    last 10 ms are ignored. Unlike :func:`detect_clicks` this needs no broadband burst: a
    tonal note that starts loud is enough. Returns float64 ``[E]``.
    """
    x = _audio_to_float(wave)
    frames, length, hop = _short_frames(x, sample_rate)
    level = 10.0 * np.log10((frames**2).mean(axis=1) + 1e-12)
    back = max(1, int(round(lookback * sample_rate / hop)))
    padded = np.concatenate([np.full(back, np.inf), level])
    floor = np.min(np.lib.stride_tricks.sliding_window_view(padded, back)[: len(level)], axis=1)
    reach = max(1, int(round(0.03 * sample_rate / hop)))
    ahead = np.concatenate([level, np.full(reach - 1, -np.inf)])
    coming = np.max(np.lib.stride_tricks.sliding_window_view(ahead, reach), axis=1)  # next 30 ms
    above = (level - floor >= rise_db) & (coming >= level.max() - near_peak_db)
    times = ((k * hop + 0.5 * length) / sample_rate for k in _run_starts(above))
    kept = (t for t in times if t >= start_guard)  # a fade-in, not a note
    return _first_of_clusters(kept, min_gap, x.size / sample_rate)


# Each family's audio-visual event, as seen in each modality.
EVENT_NAMES = {"ball": ("bounce", "click"), "pulse": ("swell", "note onset")}


def detect_video_events(
    frames, fps: float, family: str = "ball", positions: np.ndarray | None = None
) -> np.ndarray:
    """The family's events in frames (ball: bounces; pulse: swells), seconds ``[E]``."""
    check_family(family)
    if family == "pulse":
        return detect_swells(frames, fps)
    return detect_bounces(frames, fps, positions)


def detect_audio_events(wave, sample_rate: int, family: str = "ball") -> np.ndarray:
    """The family's events in a waveform (ball: clicks; pulse: note onsets), seconds ``[E]``."""
    check_family(family)
    if family == "pulse":
        return detect_onsets(wave, sample_rate)
    return detect_clicks(wave, sample_rate)


def visible_window(num_frames: int, fps: float, family: str = "ball") -> tuple[float, float]:
    """Times (s) where the family's events can be seen in frames as well as heard.

    A bounce is a turning point of the track, so it needs a frame on each side: those in
    the first and last frame interval cannot be seen (their clicks are heard all the same).
    A swell needs the frame before it. Scores of audio-visual timing count only the events
    inside this window, on both sides, so that real data scores near 1.
    """
    check_family(family)
    if family == "pulse":
        return 0.0, (num_frames - 1) / fps
    return 1.0 / fps, (num_frames - 2) / fps


def match_pairs(predicted, truth, tolerance: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of event times: pairs (i, j) of ``predicted[i]`` and
    ``truth[j]`` closer than ``tolerance`` (seconds, inclusive), closest first."""
    pred = np.asarray(predicted, np.float64).reshape(-1)
    true = np.asarray(truth, np.float64).reshape(-1)
    pairs = sorted(
        (abs(p - t), i, j)
        for i, p in enumerate(pred)
        for j, t in enumerate(true)
        if abs(p - t) <= tolerance
    )
    used_p, used_t, out = set(), set(), []
    for _, i, j in pairs:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out.append((i, j))
    return out


def match_events(predicted, truth, tolerance: float) -> tuple[float, float]:
    """Precision and recall of predicted event times against true ones.

    Pairs closer than ``tolerance`` (seconds, inclusive) are matched greedily, closest first,
    each event at most once. An empty prediction has precision 1; empty truth has recall 1.
    """
    n_pred = np.asarray(predicted).size
    n_true = np.asarray(truth).size
    matched = len(match_pairs(predicted, truth, tolerance))
    precision = matched / n_pred if n_pred else 1.0
    recall = matched / n_true if n_true else 1.0
    return precision, recall
