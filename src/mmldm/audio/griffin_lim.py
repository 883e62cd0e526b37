"""Griffin-Lim: the vocoder-free fallback, mel -> linear magnitude -> waveform (no torchaudio).

Used only when no HiFi-GAN weights are configured: the phase is estimated, not learned, so the
audio sounds metallic. It shares the framing of :func:`mmldm.audio.mel.linear_spectrogram`
(HiFi-GAN's): reflect padding of ``(n_fft - hop) // 2`` samples on each side, then an STFT
without centring and with a Hann window, so ``frames`` mel frames give ``frames * hop`` samples.

* :func:`mel_to_linear` inverts the Slaney mel filterbank by non-negative least squares,
  solved with FISTA (accelerated projected gradient; Beck and Teboulle 2009) from the clamped
  pseudo-inverse solution. The filterbank is well conditioned (singular values 0.035 to 0.008
  at the default settings), so a few hundred cheap iterations fit the mel closely.
* :func:`griffin_lim` is the fast Griffin-Lim algorithm of Perraudin, Balazs and Søndergaard
  (2013): Griffin and Lim's alternating projections with an extrapolation (momentum) step.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from mmldm.audio.mel import MelSettings, mel_filterbank

NNLS_ITERS = 300  # FISTA steps of mel_to_linear; max log-mel error ~1e-3 on a tone (see tests)
_TINY = 1e-16  # guards |X| = 0 when taking the phase X / |X|
_ENVELOPE_EPS = 1e-11  # overlap-add windows below this are treated as uncovered samples


# --------------------------------------------------------------------------------------------
# Mel -> linear magnitude
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _nnls_operators(s: MelSettings) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Filterbank ``M [n_mels, F]``, its pseudo-inverse ``[F, n_mels]`` and ``1 / ||M||_2^2``
    (the FISTA step; ``||M||_2^2`` is the Lipschitz constant of the gradient). float64, CPU."""
    basis = mel_filterbank(s, torch.float64)
    pinv = torch.linalg.pinv(basis)
    lipschitz = float(torch.linalg.matrix_norm(basis, ord=2) ** 2)
    return basis, pinv, 1.0 / lipschitz


def mel_to_linear(
    log_mel: torch.Tensor, settings: MelSettings, n_iter: int = NNLS_ITERS
) -> torch.Tensor:
    """Non-negative least-squares inverse of :func:`mmldm.audio.mel.mel_spectrogram`'s filterbank.

    Solves ``min_{S >= 0} ||M S - exp(log_mel)||^2`` per frame: start from the pseudo-inverse
    solution clamped to >= 0, then ``n_iter`` FISTA steps (gradient step of size
    ``1 / ||M||_2^2``, projection onto S >= 0, Nesterov extrapolation). Computed in float64.
    Frequencies above ``fmax`` (no filter covers them) come out as 0.

    Args:
        log_mel: ``[..., n_mels, T]`` natural-log mel (values >= log(1e-5)).
        settings: the mel settings that produced ``log_mel``.
        n_iter: FISTA iterations (0: clamped pseudo-inverse only).
    Returns:
        ``[..., n_fft // 2 + 1, T]`` linear STFT magnitude (>= 0), in ``log_mel``'s dtype.
    """
    if log_mel.dim() < 2 or log_mel.shape[-2] != settings.n_mels:
        raise ValueError(
            f"mel_to_linear expects [..., {settings.n_mels}, T], got {tuple(log_mel.shape)}"
        )
    basis, pinv, step = _nnls_operators(settings)
    basis, pinv = basis.to(log_mel.device), pinv.to(log_mel.device)
    mel = log_mel.to(torch.float64).exp()
    spec = (pinv @ mel).clamp(min=0.0)
    extrapolated, t = spec, 1.0
    target = basis.T @ mel  # the constant half of the gradient M^T (M S - mel)
    for _ in range(n_iter):
        new = (extrapolated - step * (basis.T @ (basis @ extrapolated) - target)).clamp(min=0.0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        extrapolated = new + ((t - 1.0) / t_next) * (new - spec)
        spec, t = new, t_next
    return spec.to(log_mel.dtype)


# --------------------------------------------------------------------------------------------
# STFT pair with HiFi-GAN's framing
# --------------------------------------------------------------------------------------------


def _pad(s: MelSettings) -> int:
    return (s.n_fft - s.hop_length) // 2


def _window(s: MelSettings, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Hann window of ``win_length`` zero-padded (centred) to ``n_fft``, as torch.stft does."""
    window = torch.hann_window(s.win_length, dtype=dtype, device=device)
    left = (s.n_fft - s.win_length) // 2
    return F.pad(window, (left, s.n_fft - s.win_length - left))


def stft(wave: torch.Tensor, s: MelSettings) -> torch.Tensor:
    """Complex STFT with the framing of :func:`mmldm.audio.mel.linear_spectrogram`.

    Args:
        wave: ``[B, N]`` real waveform, ``N > (n_fft - hop) // 2``.
    Returns:
        ``[B, n_fft // 2 + 1, s.num_frames(N)]`` complex; ``abs()`` equals linear_spectrogram
        up to its 1e-9 guard.
    """
    pad = _pad(s)
    if wave.shape[-1] <= pad:
        raise ValueError(f"waveform of {wave.shape[-1]} samples is too short for n_fft={s.n_fft}")
    padded = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    return torch.stft(
        padded,
        s.n_fft,
        hop_length=s.hop_length,
        win_length=s.win_length,
        window=torch.hann_window(s.win_length, dtype=wave.dtype, device=wave.device),
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )


def istft(spec: torch.Tensor, s: MelSettings) -> torch.Tensor:
    """Least-squares inverse of :func:`stft` (Griffin and Lim 1984, eq. 6).

    Overlap-adds the windowed inverse FFTs, divides by the summed squared window, then drops the
    reflect padding. (torch.istft with ``center=False`` refuses a Hann window, whose first sample
    is 0, so the overlap-add is done here.)

    Args:
        spec: ``[B, n_fft // 2 + 1, T]`` complex.
    Returns:
        ``[B, T * hop]`` real waveform.
    """
    frames = spec.shape[-1]
    real_dtype = spec.real.dtype
    window = _window(s, real_dtype, spec.device)  # [n_fft]
    chunks = torch.fft.irfft(spec, n=s.n_fft, dim=-2) * window[:, None]  # [B, n_fft, T]
    total = (frames - 1) * s.hop_length + s.n_fft

    def overlap_add(x: torch.Tensor) -> torch.Tensor:  # [B, n_fft, T] -> [B, total]
        folded = F.fold(
            x, output_size=(1, total), kernel_size=(1, s.n_fft), stride=(1, s.hop_length)
        )
        return folded.reshape(x.shape[0], total)

    signal = overlap_add(chunks)
    envelope = overlap_add(window.pow(2)[None, :, None].expand(1, -1, frames))
    covered = envelope > _ENVELOPE_EPS
    signal = torch.where(covered, signal / envelope.clamp(min=_ENVELOPE_EPS), 0.0)
    pad = _pad(s)
    return signal[:, pad : pad + frames * s.hop_length]


# --------------------------------------------------------------------------------------------
# Griffin-Lim
# --------------------------------------------------------------------------------------------


def _check_griffin_lim_args(
    magnitude: torch.Tensor, settings: MelSettings, n_iter: int, momentum: float
) -> None:
    """Raise ValueError unless ``magnitude`` is ``[..., n_fft // 2 + 1, T]`` with enough frames
    for the reflect padding, ``n_iter >= 0`` and ``0 <= momentum < 1``."""
    n_freq = settings.n_fft // 2 + 1
    if magnitude.dim() < 2 or magnitude.shape[-2] != n_freq:
        raise ValueError(
            f"griffin_lim expects [..., {n_freq}, T] (n_fft={settings.n_fft}), "
            f"got {tuple(magnitude.shape)}"
        )
    if n_iter < 0 or not 0.0 <= momentum < 1.0:
        raise ValueError(f"need n_iter >= 0 and 0 <= momentum < 1, got {n_iter}, {momentum}")
    frames = magnitude.shape[-1]
    if frames * settings.hop_length <= _pad(settings):
        raise ValueError(
            f"{frames} frame(s) are too few for the reflect padding of n_fft={settings.n_fft}"
        )


def _initial_phase(mag: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Phase ``phi_0 ~ U[0, 2 pi)`` of ``mag``'s shape ``[B, ...]``, device and dtype; from
    ``generator`` (CPU) or, when None, a fixed seed (0). Without a generator every row starts
    from the same draw, so that a clip's waveform does not depend on the batch it is in."""
    shape = mag.shape
    if generator is None:
        generator = torch.Generator().manual_seed(0)
        shape = (1, *mag.shape[1:])
    # Drawn on the CPU then moved, so every device starts from the same phase.
    phase = torch.rand(shape, generator=generator, dtype=torch.float64) * (2.0 * math.pi)
    return phase.expand(mag.shape).to(device=mag.device, dtype=mag.dtype)


def griffin_lim(
    magnitude: torch.Tensor,
    settings: MelSettings,
    n_iter: int = 64,
    momentum: float = 0.99,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): estimate a waveform from an STFT magnitude.

    With ``P(X) = stft(istft(X))`` (projection onto consistent spectrograms) and
    ``A(X) = magnitude * X / |X|`` (onto the given magnitude)::

        c_0 = P(magnitude * exp(i phi_0)),  t_0 = c_0
        c_n = P(A(t_{n-1})),  t_n = c_n + momentum * (c_n - c_{n-1})
        wave = istft(A(c_N))

    ``momentum = 0`` is the original Griffin-Lim; 0.99 is Perraudin et al.'s recommendation.

    Args:
        magnitude: ``[..., n_fft // 2 + 1, T]`` linear magnitude (>= 0), HiFi-GAN framing,
            ``T * hop > (n_fft - hop) // 2`` (for the reflect padding).
        n_iter: iterations.
        generator: CPU generator for the initial phase ``phi_0 ~ U[0, 2 pi)``; None uses a fixed
            seed (0), so the result is deterministic and the same on every device.
    Returns:
        ``[..., T * hop]`` waveform in ``magnitude``'s dtype, not clipped (the amplitude follows
        the magnitude's scale).
    """
    _check_griffin_lim_args(magnitude, settings, n_iter, momentum)
    n_freq, frames = magnitude.shape[-2:]
    batch_shape = magnitude.shape[:-2]
    mag = magnitude.reshape(-1, n_freq, frames)
    phase = _initial_phase(mag, generator)

    def project(x: torch.Tensor) -> torch.Tensor:  # onto consistent spectrograms
        return stft(istft(x, settings), settings)

    def impose(x: torch.Tensor) -> torch.Tensor:  # keep the phase, impose the magnitude
        return mag * (x / x.abs().clamp(min=_TINY))

    previous = project(torch.polar(mag, phase))
    t = previous
    for _ in range(n_iter):
        current = project(impose(t))
        t = current + momentum * (current - previous)
        previous = current
    wave = istft(impose(previous), settings)
    return wave.reshape(*batch_shape, frames * settings.hop_length)
