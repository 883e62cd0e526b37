"""Mel spectrograms exactly as HiFi-GAN computes them, and the audio image of MM-LDM.

HiFi-GAN's ``mel_spectrogram`` (docs/design.md §2):
    reflect-pad (n_fft - hop) / 2 on each side, STFT without centring (Hann window),
    magnitude sqrt(re^2 + im^2 + 1e-9), Slaney mel filterbank, log(clamp(x, 1e-5)).

Audio image (the paper, sec. 3.1): log-mel -> dB = 20 log10(mel)
-> clip((dB - 20 + 100) / 100, 0, 1) -> grey image (rows = mel bands, band 0 on top;
columns = frames) -> RGB -> resized to the frame size, in [-1, 1] like the video frames.
:func:`audio_image_to_mel` inverts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

LOG_CLAMP = 1e-5
DB_REF, DB_RANGE = 20.0, 100.0  # normalised = (dB - DB_REF + DB_RANGE) / DB_RANGE


@dataclass(frozen=True)
class MelSettings:
    """The STFT / mel parameters; must equal the vocoder's (HiFi-GAN's config.json).

    The defaults are HiFi-GAN's and the paper presets'; ``DataConfig`` takes its defaults from
    here and gives its values back as ``cfg.data.mel``."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0

    def num_frames(self, num_samples: int) -> int:
        """Mel frames of a waveform of ``num_samples`` (HiFi-GAN padding, no centring)."""
        padded = num_samples + 2 * ((self.n_fft - self.hop_length) // 2)
        return 1 + (padded - self.n_fft) // self.hop_length


# --------------------------------------------------------------------------------------------
# Slaney mel scale and filterbank (as librosa.filters.mel(htk=False, norm="slaney"))
# --------------------------------------------------------------------------------------------

_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log_part = _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log_part, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log_part = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log_part, linear)


@lru_cache(maxsize=16)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: constant energy per band
    return weights


def mel_filterbank(s: MelSettings, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` Slaney-normalised triangular filters."""
    return torch.from_numpy(_filterbank(s.sample_rate, s.n_fft, s.n_mels, s.fmin, s.fmax)).to(dtype)


# --------------------------------------------------------------------------------------------
# Mel spectrogram
# --------------------------------------------------------------------------------------------


def linear_spectrogram(wave: torch.Tensor, s: MelSettings) -> torch.Tensor:
    """Magnitude STFT ``[..., n_fft // 2 + 1, frames]`` with HiFi-GAN's padding."""
    if wave.abs().max() > 1.0 + 1e-3:
        raise ValueError(f"waveform values must lie in [-1, 1], max |x| = {wave.abs().max():.3f}")
    shape = wave.shape[:-1]
    pad = (s.n_fft - s.hop_length) // 2
    if wave.shape[-1] <= pad:
        raise ValueError(f"waveform of {wave.shape[-1]} samples is too short for n_fft={s.n_fft}")
    flat = wave.reshape(-1, 1, wave.shape[-1])  # [B, 1, N] for reflect padding
    flat = F.pad(flat, (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(s.win_length, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(
        flat,
        s.n_fft,
        hop_length=s.hop_length,
        win_length=s.win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    return magnitude.reshape(*shape, *magnitude.shape[-2:])


def mel_spectrogram(wave: torch.Tensor, s: MelSettings) -> torch.Tensor:
    """Natural-log mel spectrogram of HiFi-GAN.

    Args:
        wave: ``[..., N]`` waveform in [-1, 1] at ``s.sample_rate``.
    Returns:
        ``[..., n_mels, s.num_frames(N)]``, values >= log(1e-5).
    """
    magnitude = linear_spectrogram(wave, s)
    basis = mel_filterbank(s, magnitude.dtype).to(magnitude.device)
    return torch.log(torch.clamp(basis @ magnitude, min=LOG_CLAMP))


# --------------------------------------------------------------------------------------------
# Audio image
# --------------------------------------------------------------------------------------------


def mel_to_unit(log_mel: torch.Tensor) -> torch.Tensor:
    """Natural-log mel -> normalised dB in [0, 1]."""
    db = 20.0 * log_mel / math.log(10.0)
    return ((db - DB_REF + DB_RANGE) / DB_RANGE).clamp(0.0, 1.0)


def unit_to_mel(unit: torch.Tensor) -> torch.Tensor:
    """Normalised dB in [0, 1] -> natural-log mel (inverse of :func:`mel_to_unit` on its range)."""
    db = unit.clamp(0.0, 1.0) * DB_RANGE - DB_RANGE + DB_REF
    return db * math.log(10.0) / 20.0


@lru_cache(maxsize=32)
def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` weights of a 1-D bilinear resize (PIL's: triangle filter, widened to
    antialias when shrinking; pixel centres at i + 0.5, edges renormalised). float64."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # [n_out]
    taps = torch.arange(n_in, dtype=torch.float64) + 0.5  # [n_in]
    weights = (1.0 - (taps[None, :] - centres[:, None]).abs() / support).clamp(min=0.0)
    return weights / weights.sum(dim=1, keepdim=True)


@lru_cache(maxsize=32)
def _unresize_matrix(n_orig: int, n_resized: int) -> torch.Tensor:
    """``[n_orig, n_resized]``: the way back from ``resize_matrix(n_orig, n_resized)``.

    Enlarging has full column rank, so its pseudo-inverse undoes it exactly (and gives the
    least-squares fit for a decoded, noisy image). Shrinking lost detail: resize back up.
    """
    if n_resized >= n_orig:
        return torch.linalg.pinv(resize_matrix(n_orig, n_resized))
    return resize_matrix(n_resized, n_orig)


def _resize(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Separable bilinear resize of ``[..., H, W]`` to ``[..., rows, cols]``."""
    r = resize_matrix(x.shape[-2], rows).to(x.device, x.dtype)
    c = resize_matrix(x.shape[-1], cols).to(x.device, x.dtype)
    return r @ x @ c.T


def mel_to_audio_image(log_mel: torch.Tensor, size: int, quantize: bool = False) -> torch.Tensor:
    """Log-mel ``[B, n_mels, T]`` -> audio image ``[B, 3, size, size]`` in [-1, 1].

    ``quantize`` rounds to 8 bits first, as the paper's PIL grey image does.
    """
    unit = mel_to_unit(log_mel).unsqueeze(1)  # [B, 1, n_mels, T]
    if quantize:
        unit = torch.round(unit * 255.0) / 255.0
    image = _resize(unit, size, size) * 2.0 - 1.0
    return image.clamp(-1.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def audio_image(wave: torch.Tensor, data) -> torch.Tensor:
    """Waveform ``[B, N]`` in [-1, 1] -> audio image ``[B, 3, S, S]`` in [-1, 1] with the mel and
    image settings of ``data`` (a :class:`mmldm.config.DataConfig`); float32."""
    mel = mel_spectrogram(wave.float(), data.mel)
    return mel_to_audio_image(mel, data.resolution)


def audio_image_to_mel(image: torch.Tensor, n_mels: int, num_frames: int) -> torch.Tensor:
    """Audio image ``[B, 3, H, W]`` in [-1, 1] -> log-mel ``[B, n_mels, num_frames]``.

    The channels are averaged (a decoded image need not be exactly grey), then the resize of
    :func:`mel_to_audio_image` is inverted by its pseudo-inverse along each axis, which is exact
    on an undistorted image (a plain downscale would blur each band into its neighbours).
    """
    grey = image.mean(dim=1).to(torch.float64)  # [B, H, W]
    rows = _unresize_matrix(n_mels, grey.shape[-2]).to(grey.device)  # [n_mels, H]
    cols = _unresize_matrix(num_frames, grey.shape[-1]).to(grey.device)  # [T, W]
    unit = (rows @ grey @ cols.T + 1.0) / 2.0  # [B, n_mels, T]
    return unit_to_mel(unit).to(image.dtype)
