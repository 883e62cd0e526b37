"""The triplet discriminator of MM-LDM (paper eq. 2) and its hinge losses.

It judges <audio image, frame i, frame j> (i < j) in pixel space, so it sees single-modality
realism, audio-video consistency and temporal order at once. Architecture: per-slot 2-D residual
blocks over a downsampling pyramid with a learned slot embedding, and full attention across all
three slots at the configured downsampling factors (the paper's "cross-modal full attention").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmldm.models.blocks import Downsample, FullAttention, ResBlock, group_norm, per_slot

SLOTS = 3


@dataclass(frozen=True)
class TripletDiscriminatorConfig:
    """The discriminator's widths (the paper presets': 32 x [1, 2, 3, 4, 4, 6, 6])."""

    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    head_channels: int
    attention_resolutions: tuple[int, ...]  # downsampling factors with full attention


class TripletDiscriminator(nn.Module):
    """``[B, 3, 3, H, W]`` triplets (audio image, frame i, frame j) in [-1, 1] -> logits ``[B]``."""

    def __init__(self, cfg: TripletDiscriminatorConfig) -> None:
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        self.slot_embed = nn.Parameter(torch.zeros(1, SLOTS, widths[0], 1, 1))
        self.layers = nn.ModuleList()
        ch, ds = widths[0], 1
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.layers.append(ResBlock(ch, width))
                ch = width
            if ds in cfg.attention_resolutions:
                self.layers.append(FullAttention(ch, cfg.head_channels))
            if level < len(widths) - 1:
                self.layers.append(Downsample(ch))
                ds *= 2
        self.out = nn.Sequential(group_norm(ch), nn.SiLU())
        self.final_attention = FullAttention(ch, cfg.head_channels)
        self.head = nn.Linear(ch, 1)

    def forward(self, triplet: torch.Tensor) -> torch.Tensor:
        x = per_slot(self.stem, triplet) + self.slot_embed
        for layer in self.layers:
            x = layer(x) if isinstance(layer, FullAttention) else per_slot(layer, x)
        x = self.final_attention(per_slot(self.out, x))
        return self.head(x.mean(dim=(1, 3, 4))).squeeze(-1)


def make_triplets(
    audio: torch.Tensor,
    frame_i: torch.Tensor,
    frame_j: torch.Tensor,
    audio_hat: torch.Tensor,
    frame_i_hat: torch.Tensor,
    frame_j_hat: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real triplet and the four fakes of the paper (hats are reconstructions).

    Returns:
        real ``[B, 3, 3, H, W]`` = <a, v_i, v_j> and fakes ``[4B, 3, 3, H, W]`` =
        <a^, v^_i, v^_j>, <a^, v^_i, v_j>, <a^, v_i, v^_j>, <a^, v^_j, v^_i> (wrong order).
    """
    real = torch.stack([audio, frame_i, frame_j], dim=1)
    fakes = torch.cat(
        [
            torch.stack([audio_hat, frame_i_hat, frame_j_hat], dim=1),
            torch.stack([audio_hat, frame_i_hat, frame_j], dim=1),
            torch.stack([audio_hat, frame_i, frame_j_hat], dim=1),
            torch.stack([audio_hat, frame_j_hat, frame_i_hat], dim=1),
        ]
    )
    return real, fakes


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: push real above +1 and every fake below -1."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side: the fully reconstructed triplet <a^, v^_i, v^_j> should look real."""
    return -fake_logits.mean()


class PatchDiscriminator(nn.Module):
    """A PatchGAN (pix2pix / taming) for the optional adversarial term of VAE training:
    ``[N, 3, H, W]`` -> patch logits ``[N, 1, H / 8, W / 8]``."""

    def __init__(self, base_channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, layers):
            out = base_channels * min(2**i, 8)
            seq += [nn.Conv2d(ch, out, 4, 2, 1), group_norm(out), nn.LeakyReLU(0.2)]
            ch = out
        seq += [
            nn.Conv2d(ch, ch, 3, 1, 1),
            group_norm(ch),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 1, 3, 1, 1),
        ]
        self.net = nn.Sequential(*seq)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
