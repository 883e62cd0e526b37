"""HiFi-GAN generator (Kong, Kim and Bae, NeurIPS 2020) and a loader for the original release.

Architecture (the paper, sec. 2.1 and appendix A; fig. 1):

    log-mel [B, num_mels, T]
      -> conv_pre (k7)                                         [B, C, T]
      -> for each upsampling stage i (rate u_i, kernel k_i):
           leaky_relu(0.1) -> ConvTranspose1d (stride u_i)     [B, C / 2^(i+1), T * u_1...u_i]
           -> multi-receptive-field fusion (MRF): the mean of one residual block per
              kernel size in ``resblock_kernel_sizes``
      -> leaky_relu (slope 0.01) -> conv_post (k7) -> tanh     [B, 1, T * prod(u)]

Parameter names follow the original release (github.com/jik876/hifi-gan) so that its
checkpoints load as they are: ``conv_pre``, ``ups.{i}``, ``resblocks.{i * num_kernels + j}``
with ``convs1.{k}`` / ``convs2.{k}`` (ResBlock1) or ``convs.{k}`` (ResBlock2), ``conv_post``.

Weight norm: the release wraps every convolution in ``torch.nn.utils.weight_norm``, so its
generator checkpoints hold ``<name>.weight_g`` and ``<name>.weight_v`` instead of
``<name>.weight``. Weight norm only matters for training; for inference this module holds plain
convolutions and :func:`fold_weight_norm` folds ``weight = g * v / ||v||`` once at load time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.errors import MMLDMError
from mmldm.weights import CheckpointError, load_state_dict_file, load_weights

log = logging.getLogger(__name__)


class VocoderConfigError(MMLDMError, ValueError):
    """A HiFi-GAN ``config.json`` that is malformed or describes another mel than the data's."""


LRELU_SLOPE = 0.1  # inside the upsampling stages and residual blocks (the release's LRELU_SLOPE)
FINAL_LRELU_SLOPE = 0.01  # before conv_post the release calls F.leaky_relu with its default slope
CONFIG_FILE = "config.json"
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class HiFiGANConfig:
    """The generator and signal fields of the release's ``config.json``.

    Audio fields (``num_mels`` ... ``fmax``) describe the mel spectrogram the generator was
    trained on; they must equal :class:`mmldm.audio.mel.MelSettings` of the data
    (checked by :func:`mmldm.audio.vocoder.load_vocoder`).
    """

    resblock: str  # "1": ResBlock1 (two convs per dilation, V1/V2) | "2": ResBlock2 (V3)
    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    upsample_initial_channel: int
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    num_mels: int = 80
    n_fft: int = 1024
    hop_size: int = 256
    win_size: int = 1024
    sampling_rate: int = 22050
    fmin: float = 0.0
    fmax: float | None = 8000.0
    # Where the values came from, for error messages; not a config.json key.
    source: str = field(default="HiFiGANConfig", repr=False, compare=False)

    def __post_init__(self) -> None:
        self.resblock = str(self.resblock)  # tolerate "resblock": 1 written as a number
        where = self.source
        if self.resblock not in ("1", "2"):
            raise VocoderConfigError(
                f'{where}: \'resblock\' must be "1" or "2", got {self.resblock!r}'
            )
        if not self.upsample_rates or len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise VocoderConfigError(
                f"{where}: 'upsample_rates' {self.upsample_rates} and 'upsample_kernel_sizes' "
                f"{self.upsample_kernel_sizes} must be non-empty and of equal length"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            # ConvTranspose1d output length is (T-1)u - 2((k-u)//2) + k, which equals T*u only
            # when k - u is even and non-negative.
            if u <= 0 or k < u or (k - u) % 2:
                raise VocoderConfigError(
                    f"{where}: upsample kernel {k} with rate {u}: need k >= u and k - u even "
                    "so that each stage multiplies the length exactly by u"
                )
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise VocoderConfigError(
                f"{where}: 'resblock_kernel_sizes' and 'resblock_dilation_sizes' must have the "
                "same length (one dilation list per kernel size)"
            )
        if not self.resblock_kernel_sizes:
            raise VocoderConfigError(f"{where}: 'resblock_kernel_sizes' must not be empty")
        for k in self.resblock_kernel_sizes:
            if k % 2 == 0:
                raise VocoderConfigError(
                    f"{where}: resblock kernel sizes must be odd ('same'), got {k}"
                )
        channels = self.upsample_initial_channel >> len(self.upsample_rates)
        if channels < 1 or channels << len(self.upsample_rates) != self.upsample_initial_channel:
            raise VocoderConfigError(
                f"{where}: 'upsample_initial_channel' {self.upsample_initial_channel} must be "
                f"divisible by 2^{len(self.upsample_rates)} (channels halve at every stage)"
            )
        if self.hop_size != math.prod(self.upsample_rates):
            raise VocoderConfigError(
                f"{where}: the product of 'upsample_rates' {self.upsample_rates} is "
                f"{math.prod(self.upsample_rates)}, but 'hop_size' is {self.hop_size}; "
                "the generator must output hop_size samples per mel frame"
            )

    @property
    def upsample_factor(self) -> int:
        """Waveform samples per mel frame (= prod(upsample_rates) = hop_size)."""
        return math.prod(self.upsample_rates)

    @classmethod
    def required_keys(cls) -> list[str]:
        """Every ``config.json`` key this class reads (all of them are required)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "source"]

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], source: str = "a HiFi-GAN config"
    ) -> HiFiGANConfig:
        """Build from a ``config.json`` dict; training-only keys are ignored.

        Raises:
            ValueError: a required key is missing (the message names ``source`` and the keys).
        """
        required = cls.required_keys()
        missing = [k for k in required if k not in values]
        if missing:
            raise VocoderConfigError(
                f"{source}: missing HiFi-GAN config key(s) {', '.join(missing)} "
                f"(a generator config needs: {', '.join(required)})"
            )
        ignored = sorted(set(values) - set(required))
        if ignored:  # batch_size, learning_rate, adam_b1, segment_size, dist_config, ...
            log.debug("%s: ignoring training-only keys %s", source, ", ".join(ignored))
        kwargs = {k: values[k] for k in required}
        try:
            for key in ("upsample_rates", "upsample_kernel_sizes", "resblock_kernel_sizes"):
                kwargs[key] = [int(v) for v in kwargs[key]]
            kwargs["resblock_dilation_sizes"] = [
                [int(d) for d in ds] for ds in kwargs["resblock_dilation_sizes"]
            ]
            for key in ("upsample_initial_channel", "num_mels", "n_fft", "hop_size", "win_size"):
                kwargs[key] = int(kwargs[key])
            kwargs["sampling_rate"] = int(kwargs["sampling_rate"])
        except (TypeError, ValueError) as err:
            raise VocoderConfigError(f"{source}: malformed HiFi-GAN config value ({err})") from None
        return cls(**kwargs, source=source)

    @classmethod
    def from_json(cls, path: str | Path) -> HiFiGANConfig:
        """Read the release's ``config.json``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not valid JSON, or a required key is missing (names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"HiFi-GAN config not found: {path}")
        try:
            values = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise VocoderConfigError(f"{path}: not a valid JSON file ({err})") from None
        if not isinstance(values, dict):
            raise VocoderConfigError(f"{path}: expected a JSON object, got {type(values).__name__}")
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` keys and values (no training keys)."""
        return {k: getattr(self, k) for k in self.required_keys()}

    def to_json(self, path: str | Path) -> None:
        """Write a ``config.json`` that :meth:`from_json` (and the release) can read."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def preset(cls, name: str) -> HiFiGANConfig:
        """One of the published generator variants: "V1", "V2" or "V3" (a fresh copy)."""
        key = name.upper()
        if key not in PRESETS:
            raise VocoderConfigError(
                f"unknown HiFi-GAN preset {name!r} (choose from {', '.join(PRESETS)})"
            )
        return cls.from_dict(json.loads(json.dumps(PRESETS[key])), source=f"HiFi-GAN {key}")


# The paper's table 1 / appendix A and the release's config_v1/v2/v3.json (LJSpeech, 22.05 kHz).
_AUDIO = {
    "num_mels": 80,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "sampling_rate": 22050,
    "fmin": 0,
    "fmax": 8000,
}
_V1 = {
    "resblock": "1",
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    **_AUDIO,
}
PRESETS: dict[str, dict[str, Any]] = {
    "V1": _V1,
    "V2": {**_V1, "upsample_initial_channel": 128},  # V1 with a quarter of the channels
    "V3": {
        "resblock": "2",
        "upsample_rates": [8, 8, 4],
        "upsample_kernel_sizes": [16, 16, 8],
        "upsample_initial_channel": 256,
        "resblock_kernel_sizes": [3, 5, 7],
        "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]],
        **_AUDIO,
    },
}


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------


def _same_conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    """Length-preserving dilated conv: padding d(k-1)/2 (k odd)."""
    return nn.Conv1d(
        channels,
        channels,
        kernel_size,
        dilation=dilation,
        padding=dilation * (kernel_size - 1) // 2,
    )


class ResBlock1(nn.Module):
    """For each dilation d: ``x = x + convs2[j](lrelu(convs1[j](lrelu(x))))``.

    ``convs1[j]`` is dilated by d, ``convs2[j]`` is not. Shape-preserving ``[B, C, L]``.
    """

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_same_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_same_conv(channels, kernel_size, 1) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            h = c1(F.leaky_relu(x, LRELU_SLOPE))
            x = x + c2(F.leaky_relu(h, LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """For each dilation d: ``x = x + convs[j](lrelu(x))``. Shape-preserving ``[B, C, L]``."""

    def __init__(self, channels: int, kernel_size: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_same_conv(channels, kernel_size, d) for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """Log-mel -> waveform. Plain (weight-norm folded) convolutions, release parameter names."""

    def __init__(self, config: HiFiGANConfig) -> None:
        super().__init__()
        self.config = config
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.num_upsamples = len(config.upsample_rates)
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        stages = zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True)
        for i, (u, k) in enumerate(stages):
            self.ups.append(
                nn.ConvTranspose1d(ch >> i, ch >> (i + 1), k, stride=u, padding=(k - u) // 2)
            )
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        self.resblocks = nn.ModuleList()
        kernels = list(
            zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
        )
        for i in range(self.num_upsamples):  # index i * num_kernels + j, as in the release
            for k, dilations in kernels:
                self.resblocks.append(block(ch >> (i + 1), k, dilations))
        self.conv_post = nn.Conv1d(ch >> self.num_upsamples, 1, 7, padding=3)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's init: N(0, 0.01) weights on the upsampling convs, every resblock conv
        and conv_post; conv_pre and all biases keep PyTorch's default init (as released).

        Only matters for training from scratch; loading a checkpoint overwrites all of it.
        """
        for module in (self.ups, self.resblocks, self.conv_post):
            for m in module.modules():
                if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Synthesize a waveform.

        Args:
            mel: ``[B, num_mels, T]`` natural-log mel spectrogram, as
                :func:`mmldm.audio.mel.mel_spectrogram` computes it (values >= log(1e-5)).
        Returns:
            ``[B, T * prod(upsample_rates)]`` waveform in [-1, 1] at ``config.sampling_rate``.
        """
        if mel.dim() != 3 or mel.shape[1] != self.config.num_mels:
            raise ValueError(
                f"HiFiGANGenerator expects a mel of shape [B, {self.config.num_mels}, T], "
                f"got {tuple(mel.shape)}"
            )
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            mrf = blocks[0](x)
            for block in blocks[1:]:
                mrf = mrf + block(x)
            x = mrf / self.num_kernels  # MRF: mean over the kernel sizes
        x = self.conv_post(F.leaky_relu(x, FINAL_LRELU_SLOPE))
        return torch.tanh(x).squeeze(1)


# --------------------------------------------------------------------------------------------
# Loading the release's checkpoints
# --------------------------------------------------------------------------------------------


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    """||v|| over every dim but 0, shaped ``[v.shape[0], 1, ..., 1]`` (torch weight_norm dim=0).

    For Conv1d (weight ``[out, in, k]``) that is one norm per output channel; for
    ConvTranspose1d (weight ``[in, out, k]``) the release also used the default dim=0, so it is
    one norm per *input* channel there.
    """
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def fold_weight_norm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each weight-norm pair by the plain weight ``g * v / ||v||`` (norm over dims >= 1).

    Handles the release's ``<name>.weight_g`` / ``<name>.weight_v`` and the parametrization
    layout of ``torch.nn.utils.parametrizations.weight_norm``
    (``<name>.parametrizations.weight.original0`` = g, ``.original1`` = v). Other keys (biases,
    already plain ``.weight``) pass through unchanged. Computed in float64, cast back to v's dtype.

    Raises:
        ValueError: a g without its v (or vice versa), a g whose shape is not
            ``[v.shape[0], 1, ...]``, or a plain ``.weight`` next to a weight-norm pair.
    """
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, value in state_dict.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(g_suffix):
                name = key[: -len(g_suffix)]
                v_key = name + v_suffix
                if v_key not in state_dict:
                    raise CheckpointError(f"weight norm: '{key}' has no matching '{v_key}'")
                v = state_dict[v_key]
                expected = (v.shape[0],) + (1,) * (v.dim() - 1)
                if tuple(value.shape) != expected:
                    raise CheckpointError(
                        f"weight norm: '{key}' has shape {tuple(value.shape)}, expected "
                        f"{expected} for '{v_key}' of shape {tuple(v.shape)} (norm over dim 0)"
                    )
                if name + ".weight" in state_dict:
                    raise CheckpointError(
                        f"'{name}.weight' is present next to its weight-norm pair"
                    )
                v64 = v.to(torch.float64)
                weight = value.to(torch.float64) * v64 / _norm_except_dim0(v64)
                out[name + ".weight"] = weight.to(v.dtype)
                used.update((key, v_key))
    for key, value in state_dict.items():
        if key in used:
            continue
        if key.endswith(tuple(pairs.values())):
            raise CheckpointError(f"weight norm: '{key}' has no matching magnitude (g) tensor")
        out[key] = value
    return out


def _is_generator_candidate(path: Path) -> bool:
    """Release generators have no extension (``generator_v1``, ``g_02500000``); also accept the
    usual weight suffixes. ``do_*`` files are the release's discriminator + optimizer states."""
    if not path.is_file() or path.name.startswith(".") or path.name == CONFIG_FILE:
        return False
    if path.name.startswith("do_"):
        return False
    return path.suffix == "" or path.suffix in WEIGHT_SUFFIXES


def resolve_hifigan_files(path: str | Path) -> tuple[Path, Path]:
    """Find ``(config.json, generator file)`` for a release folder or a generator file.

    Args:
        path: a folder holding ``config.json`` and exactly one generator checkpoint (no
            extension as released, or .pt/.pth/.ckpt/.safetensors; ``do_*`` files ignored), or
            the generator file itself with ``config.json`` beside it.

    Raises:
        CheckpointError: the path, config.json or the generator is missing, or the folder holds
            several candidate generators (all are listed).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"HiFi-GAN vocoder path not found: {path}")
    if path.is_dir():
        config = path / CONFIG_FILE
        candidates = sorted(p for p in path.iterdir() if _is_generator_candidate(p))
        if not candidates:
            found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise CheckpointError(
                f"{path}: no HiFi-GAN generator file in this folder (expected e.g. "
                f"'generator_v1' or 'g_02500000', or a {'/'.join(WEIGHT_SUFFIXES)} file; "
                f"found: {found})"
            )
        if len(candidates) > 1:
            raise CheckpointError(
                f"{path}: several candidate HiFi-GAN generator files "
                f"({', '.join(p.name for p in candidates)}); pass the one to use as the path"
            )
        generator = candidates[0]
    else:
        config, generator = path.parent / CONFIG_FILE, path
    if not config.is_file():
        raise CheckpointError(
            f"HiFi-GAN config not found: {config} (the release's config.json must lie beside "
            f"the generator {generator.name})"
        )
    return config, generator


def load_hifigan(path: str | Path) -> tuple[HiFiGANGenerator, HiFiGANConfig]:
    """Load a HiFi-GAN generator of the original release (or of the same layout).

    Args:
        path: see :func:`resolve_hifigan_files`.
    Returns:
        The generator in eval mode on the CPU, and its config.

    Raises:
        CheckpointError: missing files, pickled code in the checkpoint, no ``generator`` entry,
            or weights that do not fit the config (missing / unexpected / mis-shaped keys).
        ValueError: an invalid config.json.
    """
    config_path, generator_path = resolve_hifigan_files(path)
    config = HiFiGANConfig.from_json(config_path)
    # Release checkpoints are {"generator": state_dict}; safetensors files are flat.
    key = None if generator_path.suffix == ".safetensors" else "generator"
    state_dict = load_state_dict_file(generator_path, key=key)
    try:
        state_dict = fold_weight_norm(state_dict)
    except CheckpointError as err:  # the tensor's name: now the file's too
        raise CheckpointError(f"{generator_path}: {err}") from None
    model = HiFiGANGenerator(config)
    load_weights(model, state_dict, strict=True, source=str(generator_path))
    model.eval()
    log.info(
        "loaded HiFi-GAN generator %s (%.2fM parameters, %d Hz)",
        generator_path,
        sum(p.numel() for p in model.parameters()) / 1e6,
        config.sampling_rate,
    )
    return model, config
