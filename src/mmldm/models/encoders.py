"""Modality encoders (perceptual latents z) and projectors (semantic features s), docs/design.md §4.

Video: VAE latents of the key frames ``[B, K, 4, h, w]`` + a learnable content slot ->
3-D conv stem -> levels of (ResBlock, spatial attention, temporal attention), one 2x downsample
between levels -> read at the content slot -> mean and log-variance of z_v ``[B, C, h/f_v, w/f_v]``.
Audio: the VAE latent of the audio image ``[B, 4, h, w]`` -> the same family with spatial
attention only -> z_a ``[B, C, h/f_a, w/f_a]``.
Projector: z -> s ``[B, D, s, s]`` (the shared semantic space).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.models.blocks import (
    Downsample,
    ResBlock,
    SpatialAttention,
    TemporalAttention,
    group_norm,
    per_slot,
)


@dataclass
class DiagonalGaussian:
    """A diagonal Gaussian posterior ``N(mean, exp(logvar))`` over a latent."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> DiagonalGaussian:
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar.clamp(-30.0, 20.0))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL to N(0, I), summed over the latent, ``[B]``."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


def small_posterior(conv: nn.Conv2d, latent_channels: int, logvar: float = -6.0) -> nn.Conv2d:
    """Initialise the log-variance half of a moments conv to ``logvar`` (std 0.05).

    With the paper's tiny KL weight nothing pulls a unit-variance posterior down but the
    reconstruction loss, slowly: until then z is mostly noise and the decoder learns to ignore
    it. Starting nearly deterministic lets z carry the signal from the first steps.
    """
    with torch.no_grad():
        conv.bias[latent_channels:].fill_(logvar)
    return conv


class VideoEncoder(nn.Module):
    """``[B, K, Cin, h, w]`` key-frame latents -> moments ``[B, 2C, h / 2^(L-1), ...]``.

    ``frame_channels = 0`` (paper): z is read at the content slot. ``frame_channels = N``: the
    content slot gives the first ``C - K N`` channels (the clip's), and each key frame's slot N
    more, stacked in key-frame order (z[:, C - K N + k N : C - K N + (k + 1) N] is key frame
    k's group); the temporal attention mixes every slot before the read-out.
    """

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        widths: list[int],
        num_res_blocks: int,
        head_channels: int,
        num_key_frames: int,
        latent_size: int,
        frame_channels: int = 0,
    ) -> None:
        super().__init__()
        slots = num_key_frames + 1
        self.frame_channels = frame_channels
        clip_channels = latent_channels - num_key_frames * frame_channels
        self.content = nn.Parameter(torch.zeros(1, 1, in_channels, latent_size, latent_size))
        self.stem = nn.Conv3d(in_channels, widths[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.blocks.append(
                    nn.ModuleList(
                        [
                            ResBlock(ch, width),
                            SpatialAttention(width, head_channels),
                            TemporalAttention(width, head_channels, slots),
                        ]
                    )
                )
                ch = width
            if level < len(widths) - 1:
                self.blocks.append(Downsample(ch))

        def head(channels: int) -> nn.Module | None:
            if not channels:
                return None
            moments = small_posterior(nn.Conv2d(ch, 2 * channels, 3, padding=1), channels)
            return nn.Sequential(group_norm(ch), nn.SiLU(), moments)

        self.out = head(clip_channels)  # read at the content slot
        self.frame_out = head(frame_channels)  # read at each key frame's slot

    def forward(self, key_latents: torch.Tensor) -> DiagonalGaussian:
        b = key_latents.shape[0]
        x = torch.cat([self.content.expand(b, -1, -1, -1, -1), key_latents], dim=1)  # [B,T,C,h,w]
        x = self.stem(x.transpose(1, 2)).transpose(1, 2)  # Conv3d wants [B, C, T, h, w]
        for block in self.blocks:
            if isinstance(block, Downsample):
                x = per_slot(block, x)
                continue
            res, spatial, temporal = block
            x = temporal(per_slot(spatial, per_slot(res, x)))
        means, logvars = [], []
        if self.out is not None:
            mean, logvar = self.out(x[:, 0]).chunk(2, dim=1)  # the content slot
            means.append(mean)
            logvars.append(logvar)
        if self.frame_out is not None:
            moments = per_slot(self.frame_out, x[:, 1:])  # [B, K, 2N, h, w]: one group per frame
            mean, logvar = moments.chunk(2, dim=2)  # each [B, K, N, h, w] -> [B, K*N, h, w]
            means.append(mean.flatten(1, 2))
            logvars.append(logvar.flatten(1, 2))
        return DiagonalGaussian.from_moments(torch.cat([*means, *logvars], dim=1))


class AudioEncoder(nn.Module):
    """``[B, Cin, h, w]`` audio-image latent -> moments ``[B, 2C, h / 2^(L-1), ...]``."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        widths: list[int],
        num_res_blocks: int,
        head_channels: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers += [ResBlock(ch, width), SpatialAttention(width, head_channels)]
                ch = width
            if level < len(widths) - 1:
                layers.append(Downsample(ch))
        moments = small_posterior(nn.Conv2d(ch, 2 * latent_channels, 3, padding=1), latent_channels)
        layers += [group_norm(ch), nn.SiLU(), moments]
        self.net = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_moments(self.net(latent))


class Projector(nn.Module):
    """Perceptual latent ``[B, C, h, w]`` -> semantic feature ``[B, D, s, s]``.

    Residual + attention levels with a 2x downsample between them; if the last level is still
    larger than ``s`` (small configs), an average pool brings it to ``s x s``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int,
        mults: list[int],
        num_res_blocks: int,
        head_channels: int,
        out_size: int,
    ) -> None:
        super().__init__()
        self.out_size = out_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width * mults[0], 3, padding=1)]
        ch = width * mults[0]
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                layers += [
                    ResBlock(ch, width * mult),
                    SpatialAttention(width * mult, head_channels),
                ]
                ch = width * mult
            if level < len(mults) - 1:
                layers.append(Downsample(ch))
        layers += [group_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = self.net(z)
        if s.shape[-1] != self.out_size:
            s = F.adaptive_avg_pool2d(s, self.out_size)
        return s
