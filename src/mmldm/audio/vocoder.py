"""Mel -> waveform: HiFi-GAN when weights are configured, Griffin-Lim otherwise.

MM-LDM decodes an audio image to a log-mel spectrogram (:func:`mmldm.audio.mel.audio_image_to_mel`)
and turns it into sound with a pretrained HiFi-GAN (config key ``vocoder.path``). The vocoder
only works on mels computed exactly as it was trained on, so :func:`load_vocoder` refuses a
vocoder whose ``config.json`` differs from the data's mel settings: the data must be resampled
to the vocoder's rate (``data.sample_rate`` etc.), never pushed through a mismatched vocoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmldm.audio.griffin_lim import griffin_lim, mel_to_linear
from mmldm.audio.hifigan import (
    HiFiGANConfig,
    HiFiGANGenerator,
    VocoderConfigError,
    load_hifigan,
    resolve_hifigan_files,
)
from mmldm.audio.mel import MelSettings

if TYPE_CHECKING:
    from mmldm.config import Config

log = logging.getLogger(__name__)

# HiFi-GAN config.json key -> MelSettings field (DataConfig uses the same names).
_SETTINGS_KEYS = {
    "sampling_rate": "sample_rate",
    "num_mels": "n_mels",
    "n_fft": "n_fft",
    "hop_size": "hop_length",
    "win_size": "win_length",
    "fmin": "fmin",
    "fmax": "fmax",
}


class Vocoder:
    """A callable mel -> waveform converter (HiFi-GAN or Griffin-Lim).

    Attributes:
        kind: "hifigan" or "griffin-lim".
        sample_rate: of the output waveform (Hz).
        hop_length: output samples per mel frame.
        settings: the mel settings it expects.
        device: where it computes (see :meth:`to`).
    """

    def __init__(
        self,
        settings: MelSettings,
        generator: HiFiGANGenerator | None = None,
        griffin_lim_iters: int = 64,
        source: str | None = None,
    ) -> None:
        self.settings = settings
        self.generator = generator.eval() if generator is not None else None
        self.kind = "hifigan" if generator is not None else "griffin-lim"
        self.griffin_lim_iters = griffin_lim_iters
        self.sample_rate = settings.sample_rate
        self.hop_length = settings.hop_length
        self.source = source  # the weights file, for logs and reports
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Vocoder:
        """Compute on ``device`` from now on (moves the HiFi-GAN weights). Returns self."""
        self.device = torch.device(device)
        if self.generator is not None:
            self.generator.to(self.device)
        return self

    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Synthesize waveforms (no gradients).

        Args:
            log_mel: ``[B, n_mels, T]`` (or ``[n_mels, T]``) natural-log mel as
                :func:`mmldm.audio.mel.mel_spectrogram` computes it.
        Returns:
            ``[B, T * hop_length]`` (or ``[T * hop_length]``) float32 waveform in [-1, 1] at
            :attr:`sample_rate`, on the device of ``log_mel``. Griffin-Lim output is clipped to
            [-1, 1]; HiFi-GAN's ends in tanh.
        """
        unbatched = log_mel.dim() == 2
        batch = log_mel.unsqueeze(0) if unbatched else log_mel
        if batch.dim() != 3 or batch.shape[1] != self.settings.n_mels:
            raise ValueError(
                f"vocoder expects a log-mel [B, {self.settings.n_mels}, T], "
                f"got {tuple(log_mel.shape)}"
            )
        with torch.no_grad():
            mel = batch.to(self.device, torch.float32)
            if self.generator is not None:
                wave = self.generator(mel)
            else:
                magnitude = mel_to_linear(mel, self.settings)
                wave = griffin_lim(magnitude, self.settings, n_iter=self.griffin_lim_iters)
                wave = wave.clamp(-1.0, 1.0)
        wave = wave.to(log_mel.device)
        return wave.squeeze(0) if unbatched else wave

    def __repr__(self) -> str:
        where = f", source={self.source!r}" if self.source else ""
        return f"Vocoder(kind={self.kind!r}, sample_rate={self.sample_rate}{where})"


def check_settings(config: HiFiGANConfig, settings: MelSettings, config_path: str | Path) -> None:
    """Raise ValueError unless the vocoder's config.json describes the same mel as ``settings``.

    The message names the config file and, for every differing key, both values.
    """
    differences = []
    for key, field_name in _SETTINGS_KEYS.items():
        theirs, ours = getattr(config, key), getattr(settings, field_name)
        same = theirs == ours if theirs is None or ours is None else float(theirs) == float(ours)
        if not same:
            differences.append(f"{key}={theirs!r} but data.{field_name}={ours!r}")
    if differences:
        raise VocoderConfigError(
            f"HiFi-GAN config {config_path} does not match the data's mel settings: "
            + "; ".join(differences)
            + ". Set the data.* keys to the vocoder's values (resample the audio to its rate) "
            "or use a vocoder trained on these settings."
        )


def load_vocoder(
    path: str | Path | None, settings: MelSettings, griffin_lim_iters: int = 64
) -> Vocoder:
    """HiFi-GAN from ``path`` (checked against ``settings``), or Griffin-Lim when ``path`` is None.

    Args:
        path: a HiFi-GAN release folder (config.json + generator) or generator file; None or ""
            selects the Griffin-Lim fallback (with a warning).
        settings: the data's mel settings.
        griffin_lim_iters: Griffin-Lim iterations of the fallback.
    Returns:
        A :class:`Vocoder` on the CPU.

    Raises:
        ValueError: the vocoder's config.json differs from ``settings``.
        mmldm.checkpoint.CheckpointError: missing or unreadable files, weights that do not fit.
    """
    if path is None or str(path) == "":
        log.warning(
            "no vocoder weights given (config key vocoder.path is empty): using Griffin-Lim "
            "(lower quality audio); set vocoder.path to a HiFi-GAN folder for the paper's results"
        )
        return Vocoder(settings, griffin_lim_iters=griffin_lim_iters)
    config_path, generator_path = resolve_hifigan_files(path)
    # Check the settings before reading the weights: a mismatch is the likelier mistake.
    check_settings(HiFiGANConfig.from_json(config_path), settings, config_path)
    generator, _ = load_hifigan(generator_path)
    return Vocoder(settings, generator=generator, source=str(generator_path))


def load_vocoder_from_config(cfg: Config, path: str | Path | None = None) -> Vocoder:
    """:func:`load_vocoder` with ``path`` (default ``cfg.vocoder.path``) and the mel settings
    of ``cfg.data``."""
    return load_vocoder(
        path or cfg.vocoder.path,
        cfg.data.mel,
        griffin_lim_iters=cfg.vocoder.griffin_lim_iters,
    )
