"""AudioCLIP's audio branch (ESResNeXt-fbsp) for MM-Diffusion's "FAD", from local weights.

MM-Diffusion (and MM-LDM, which reuses its evaluator) report as "FAD" the Frechet distance of
AudioCLIP audio embeddings times 1e4: ``AudioCLIP.encode_audio`` on 1.6 s of 44.1 kHz audio,
the raw 1024-d output (before the L2 normalisation used for the CLIP logits).

Weights: ``AudioCLIP-Full-Training.pt`` (AndreyGuzhov/AudioCLIP release v0.1), a plain state
dict of the whole AudioCLIP model; the audio branch is every key under ``audio.`` (the CLIP
image / text towers -- ``visual.*``, ``transformer.*``, ``token_embedding.weight``,
``logit_scale*``, ... -- are ignored). :class:`ESResNeXtFBSP` is an independent
implementation with the parameter names of AudioCLIP's ``model/esresnet`` code:

* front end (``fbsp``: ``m``, ``fb``, ``fc`` [1025] and an empty ``bias``; ``window``
  [1654]): the signal is scaled as from int16 (``(x + 32768) * 2 / 65535 - 1``), cut into
  frames of 1654 samples every 561 (``frame_signal``: zero-padded symmetrically to a whole
  number of frames), multiplied by a periodic Blackman-Harris window and zero-padded to 2048;
  then the learnable "frequency B-spline" filter bank (Guzhov et al. 2021, ESResNe(X)t-fbsp)
  replaces the DFT: 1025 complex filters over t in pi * linspace(-1, 1, 2048) (+ 1e-8),
  ``w_k(t) = sqrt(fb_k) * sinc(fb_k t / m_k)^m_k * exp(-i fc_k t)`` (the power of a real
  base taken on the complex plane, as the original), divided by sqrt(2048) (normalized=True);
* the power spectrum ``re^2 + im^2`` of the first 3 x 341 bins is split into 3 bands of 341
  bins, used as the 3 input channels; no resizing (AudioCLIP sets spec_height = spec_width =
  -1), values ``10 log10(p)`` with p <= 0 replaced by 1e-18;
* ResNeXt-50 32x4d (torchvision's layout: ``conv1``, ``bn1``, ``layer1..4``, ``fc``) with
  ESResNet's attention blocks ``att1..att5`` (depthwise conv + pointwise conv + BN + sigmoid
  on an adaptively max-pooled copy of the block input, multiplied onto the block output);
  the pooled 2048-d feature times ``att5`` -> ``fc`` -> 1024.

Input scaling: MM-Diffusion passes float waveforms in [-1, 1] straight to the model, so the
model's own int16 -> [-1, 1] rescaling shrinks them by 32768 (and shifts them by 1.5e-5);
``input_scale="mmdiffusion"`` (default) reproduces that; ``"int16"`` multiplies by 32768 first,
as AudioCLIP's own datasets feed int16-range audio.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmldm.metrics.i3d import fill_num_batches_tracked
from mmldm.metrics.vggish import resample
from mmldm.weights import CheckpointError, load_state_dict_file, load_weights

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
CLIP_SECONDS = 1.6  # MM-Diffusion's audio clips: int(44100 * 1.6) samples
EMBED_DIM = 1024
N_FFT = 2048
HOP_LENGTH = 561
WIN_LENGTH = 1654
PREFIX = "audio."
FAD_SCALE = 1e4  # MM-Diffusion's evaluator: metric["fad"] = frechet_distance(...) * 10000
LOG10_EPS = 1e-18
# Entries of the audio state dict that a file may lack without harm: the window buffer (fixed
# by win_length) and the FBSP layer's empty bias; every other key must match exactly.
OPTIONAL_KEYS = ("window", "fbsp.bias")


def blackman_harris(length: int) -> torch.Tensor:
    """Periodic 4-term Blackman-Harris window (scipy.signal.get_window('blackmanharris', N,
    fftbins=True)): ``a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N) - a3 cos(6 pi n / N)``."""
    a = (0.35875, 0.48829, 0.14128, 0.01168)
    phase = 2.0 * np.pi * np.arange(length) / length
    w = a[0] - a[1] * np.cos(phase) + a[2] * np.cos(2 * phase) - a[3] * np.cos(3 * phase)
    return torch.from_numpy(w).float()


def frame_signal(signal: torch.Tensor, frame_length: int, hop_length: int) -> torch.Tensor:
    """``[B, N]`` -> ``[B, frames, frame_length]``: 1 + ceil((N - L) / hop) frames (1 when
    N <= L), the signal zero-padded by half the missing length on each side (the extra sample
    at the end), as AudioCLIP's ``frame_signal``."""
    n = signal.shape[-1]
    count = 1 if n <= frame_length else 1 + math.ceil((n - frame_length) / hop_length)
    missing = max(0, (count - 1) * hop_length + frame_length - n)
    x = F.pad(signal, (missing // 2, missing - missing // 2))
    return x.unfold(-1, frame_length, hop_length)[..., :count, :]


def _complex_power(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``base ** exponent`` for a real base and exponent on the complex plane (principal
    branch): magnitude ``|base| ** exponent``, phase ``exponent * arg(base)`` (0 or pi);
    returns ``[..., 2]`` (real, imaginary)."""
    magnitude = (base * base) ** (0.5 * exponent)
    phase = exponent * torch.atan2(torch.zeros_like(base), base)
    return torch.stack((magnitude * torch.cos(phase), magnitude * torch.sin(phase)), dim=-1)


class LinearFBSP(nn.Module):
    """The learnable frequency-B-spline filter bank (parameters ``m``, ``fb``, ``fc`` and an
    empty ``bias``): frames ``[..., 2048]`` -> complex spectrum ``[..., bins, 2]``."""

    def __init__(self, out_features: int, normalized: bool = True) -> None:
        super().__init__()
        self.out_features, self.normalized, self.eps = out_features, normalized, 1e-8
        # AudioCLIP's initial values; the checkpoint overrides them
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(0))  # bias=False in AudioCLIP: an empty tensor
        self._cache: tuple | None = None

    def weights(self, in_features: int, dtype: torch.dtype, device) -> torch.Tensor:
        """Filters ``[bins, in_features, 2]`` (real, imaginary)."""
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device)
        t = (t + self.eps)[None, :]
        m, fb, fc = (p.to(dtype)[:, None] for p in (self.m, self.fb, self.fc))
        x = fb * t / (m + self.eps)
        sinc = torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)
        window = _complex_power(sinc, m.expand_as(sinc))  # [bins, in, 2]
        cos, sin = torch.cos(fc * t), -torch.sin(fc * t)  # the kernel exp(-i fc t)
        real = window[..., 0] * cos - window[..., 1] * sin
        imag = window[..., 0] * sin + window[..., 1] * cos
        out = fb.sqrt()[..., None] * torch.stack((real, imag), dim=-1)
        return out / in_features**0.5 if self.normalized else out

    def _cached_weights(self, frames: torch.Tensor) -> torch.Tensor:
        """The filters, recomputed only when the parameters (or the input size, dtype or
        device) change; gradients flow only when computed under autograd."""
        if torch.is_grad_enabled():
            return self.weights(frames.shape[-1], frames.dtype, frames.device)
        key = (
            frames.shape[-1],
            frames.dtype,
            frames.device,
            *((p.data_ptr(), p._version) for p in (self.m, self.fb, self.fc)),
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.weights(frames.shape[-1], frames.dtype, frames.device))
        return self._cache[1]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        w = self._cached_weights(frames)
        out = torch.stack((F.linear(frames, w[..., 0]), F.linear(frames, w[..., 1])), dim=-1)
        if self.bias.numel() == self.out_features * 2:
            out = out + self.bias
        return out


class Attention2d(nn.Module):
    """ESResNet's attention: adaptive max pool to the target size, depthwise conv, pointwise
    conv, BN, sigmoid (parameters ``conv_depth``, ``conv_point``, ``bn``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: tuple[int, int], padding: tuple
    ) -> None:
        super().__init__()
        self.conv_depth = nn.Conv2d(
            in_channels, in_channels, kernel, padding=padding, groups=in_channels
        )
        self.conv_point = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = F.adaptive_max_pool2d(x, tuple(size))
        return torch.sigmoid(self.bn(self.conv_point(self.conv_depth(x))))


class Bottleneck(nn.Module):
    """torchvision's ResNeXt bottleneck (1x1, grouped 3x3 with the stride, 1x1, residual)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 32) -> None:
        super().__init__()
        width = int(planes * (4 / 64.0)) * groups  # width_per_group = 4
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ESResNeXtFBSP(nn.Module):
    """AudioCLIP's audio encoder: raw audio ``[B, N]`` (or ``[B, 1, N]``) at 44.1 kHz ->
    ``[B, 1024]`` (see the module docstring for every step)."""

    def __init__(
        self,
        num_classes: int = EMBED_DIM,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        win_length: int = WIN_LENGTH,
        normalized: bool = True,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        # (planes, blocks, stride, attention kernel, attention padding)
        stages = (
            (64, 3, 1, (3, 1), (1, 0)),
            (128, 4, 2, (1, 5), (0, 2)),
            (256, 6, 2, (3, 1), (1, 0)),
            (512, 3, 2, (1, 5), (0, 2)),
        )
        for index, (planes, blocks, stride, kernel, padding) in enumerate(stages, 1):
            layers = [Bottleneck(inplanes, planes, stride)]
            att_in = inplanes
            inplanes = planes * Bottleneck.expansion
            layers += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            self.add_module(f"att{index}", Attention2d(att_in, inplanes, kernel, padding))
        self.att5 = Attention2d(inplanes, inplanes, (3, 5), (1, 2))
        self.fc = nn.Linear(inplanes, num_classes)
        self.fbsp = LinearFBSP(n_fft // 2 + 1, normalized=normalized)
        self.register_buffer("window", blackman_harris(win_length))

    def log_power(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, N]`` (model scale, see ``forward``) -> dB spectrogram
        ``[B, 3, bins // 3, frames]``."""
        x = audio.float()
        x = (x + 32768.0) * 2.0 / 65535.0 - 1.0  # scale(x, -32768, 32767, -1, 1)
        frames = frame_signal(x, self.win_length, self.hop_length) * self.window
        pad = self.n_fft - self.win_length
        frames = F.pad(frames, (pad // 2, pad - pad // 2))
        spec = self.fbsp(frames).transpose(-2, -3)  # [B, bins, frames, 2]
        per_band = spec.shape[1] // 3
        spec = spec[:, : 3 * per_band].reshape(x.shape[0], 3, per_band, *spec.shape[-2:])
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        power = torch.where(power > 0.0, power, torch.full_like(power, LOG10_EPS))
        return 10.0 * torch.log10(power)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """``audio``: ``[B, N]`` or ``[B, 1, N]`` at 44.1 kHz, in the scale the model expects
        (int16 range; see :meth:`AudioCLIPEmbedder.embed`). Returns ``[B, 1024]``."""
        x = self.log_power(audio.reshape(audio.shape[0], -1))
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, padding=1)
        for index in range(1, 5):
            attention = getattr(self, f"att{index}")
            out = getattr(self, f"layer{index}")(x)
            x = out * attention(x, out.shape[-2:])
        pooled = F.adaptive_avg_pool2d(x, 1)
        pooled = pooled * self.att5(x, pooled.shape[-2:])
        return self.fc(torch.flatten(pooled, 1))


class AudioCLIPEmbedder:
    """``embed(wave [B, N] in [-1, 1], sample_rate) -> float32 [B, 1024]`` with AudioCLIP.

    The audio is resampled to 44.1 kHz (:func:`mmldm.metrics.vggish.resample`) and embedded
    whole (MM-Diffusion: 1.6 s clips; other lengths work, the network pools over time).
    """

    def __init__(
        self,
        model: ESResNeXtFBSP,
        *,
        input_scale: str = "mmdiffusion",
        path: Path | None = None,
    ) -> None:
        if input_scale not in ("mmdiffusion", "int16"):
            raise ValueError(f"input_scale must be 'mmdiffusion' or 'int16', got {input_scale!r}")
        self.model = model.eval()
        self.input_scale = input_scale
        self.path = path
        self.name = "AudioCLIP (ESResNeXt-fbsp)"

    def to(self, device: str | torch.device) -> AudioCLIPEmbedder:
        self.model.to(device)
        return self

    @torch.no_grad()
    def embed(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"audio must be [B, N], got shape {tuple(wave.shape)}")
        device = self.model.fc.weight.device
        x = resample(wave.to(device).double(), sample_rate, SAMPLE_RATE).float()
        if self.input_scale == "int16":
            x = x * 32768.0
        return self.model(x).float()


def audio_state_dict(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The ``audio.*`` entries of an AudioCLIP checkpoint, prefix removed."""
    audio = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not audio:
        sample = ", ".join(sorted(state)[:6])
        raise CheckpointError(
            f"{path}: no AudioCLIP audio weights (keys starting with '{PREFIX}'); it holds "
            f"{len(state)} tensors ({sample}{', ...' if len(state) > 6 else ''}). "
            "Expected AudioCLIP-Full-Training.pt"
        )
    return audio


def load_audioclip(
    path: str | Path, device: str | torch.device = "cpu", *, input_scale: str = "mmdiffusion"
) -> AudioCLIPEmbedder:
    """Load the audio branch of ``AudioCLIP-Full-Training.pt``.

    Raises:
        CheckpointError naming the file when it is missing, holds pickled code, has no
        ``audio.*`` keys, or its audio keys / shapes differ from :class:`ESResNeXtFBSP`'s
        (``OPTIONAL_KEYS`` and BatchNorm counters may be absent).
    """
    path = Path(path)
    state = audio_state_dict(load_state_dict_file(path), path)
    model = ESResNeXtFBSP()
    state = fill_num_batches_tracked(model, state)
    own = model.state_dict()
    for key in OPTIONAL_KEYS:  # derived from the settings, not learnt: filled in if absent
        if key not in state:
            log.info("%s: no '%s%s'; using the computed default", path, PREFIX, key)
            state[key] = own[key]
    load_weights(model, state, strict=True, source=f"{path} ({PREFIX}*)")
    return AudioCLIPEmbedder(model, input_scale=input_scale, path=path).to(device)
