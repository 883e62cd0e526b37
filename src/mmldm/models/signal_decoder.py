"""The shared diffusion signal decoder (docs/design.md §1 and §4).

One Stable Diffusion 1.x UNet (diffusers ``UNet2DConditionModel``) predicts the noise of VAE
latents ``[N, 4, R, R]`` of a video frame or of the audio image, conditioned on its modality's
perceptual latent z and the other modality's semantic feature s:

- multi-scale residual features computed from z (video: told the frame index i / F) are added
  to the UNet's skip connections through zero-initialised 1x1 convs (ControlNet-style);
- a content vector pooled from z is added to the time embedding (``class_embed_type="identity"``,
  so Stable Diffusion's UNet weights load unchanged);
- cross-attention reads [modality tokens | class embedding | 4 semantic tokens of the other
  modality]. The last layer of every conditioning MLP is zero-initialised, the first is not
  (docs/design.md §8.1: zeroing both would leave them unable to learn anything but a constant).

A per-sample ``keep`` mask zeroes all of these inputs: the decoder learns the null condition that
classifier-free guidance needs (condition dropout, p = 0.1 while training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from einops import rearrange
from torch import nn

from mmldm.models.blocks import Downsample, ResBlock, group_norm, sinusoidal_embedding, zero_module

log = logging.getLogger(__name__)

MODALITIES = ("audio", "video")


@dataclass(frozen=True)
class SignalDecoderConfig:
    """Everything the signal decoder needs (the experiment config composes it:
    ``Config.decoder_network``)."""

    vae_channels: int  # channels of the VAE latents it denoises
    vae_size: int  # R: VAE latents are vae_channels x R x R
    z_channels: int  # C of z_a and z_v
    audio_size: int  # z_a is C x audio_size x audio_size
    video_size: int  # z_v is C x video_size x video_size
    semantic_dim: int  # channels of s_a, s_v (read as tokens)
    num_frames: int  # F: the frame index enters as i / F
    key_frames: tuple[int, ...]
    frame_channels: int  # > 0: z_v's last len(key_frames) * N channels are per key frame
    frame_index_scale: float  # i / F is scaled before its sinusoid (design §8.4)
    block_out_channels: tuple[int, ...]  # Stable Diffusion 1.x
    layers_per_block: int
    attention_heads: int
    cross_attention_dim: int
    num_modality_tokens: int
    shared: bool  # one UNet for both modalities (paper) or one each
    content_feature: bool  # pooled z added to the time embedding
    num_classes: int  # > 0: a class embedding in the cross-attention context


def build_unet(
    config: SignalDecoderConfig, gradient_checkpointing: bool = False
) -> UNet2DConditionModel:
    """The Stable Diffusion 1.x UNet layout at the configured widths."""
    d = config
    n = len(d.block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=d.vae_size,
        in_channels=d.vae_channels,
        out_channels=d.vae_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=tuple(d.block_out_channels),
        layers_per_block=d.layers_per_block,
        attention_head_dim=d.attention_heads,  # diffusers' SD naming: this is the head count
        cross_attention_dim=d.cross_attention_dim,
        norm_num_groups=min(32, min(d.block_out_channels)),
        class_embed_type="identity" if d.content_feature else None,
    )
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def skip_shapes(config: SignalDecoderConfig) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(channels, resolution) of each UNet down-block residual, and of the mid block."""
    boc, res = config.block_out_channels, config.vae_size
    shapes = [(boc[0], res)]  # conv_in
    for b, ch in enumerate(boc):
        shapes += [(ch, res)] * config.layers_per_block
        if b < len(boc) - 1:
            res //= 2
            shapes.append((ch, res))  # downsampler
    return shapes, (boc[-1], res)


@dataclass
class DecoderCondition:
    """Everything the UNet is conditioned on, for a batch of N targets."""

    residuals: list[torch.Tensor]  # each [N, C_k, R_k, R_k]
    mid: torch.Tensor  # [N, C_mid, R_mid, R_mid]
    content: torch.Tensor | None  # [N, time_embed_dim]
    context: torch.Tensor  # [N, L, cross_attention_dim]

    @staticmethod
    def cat(conds: list[DecoderCondition]) -> DecoderCondition:
        return DecoderCondition(
            residuals=[torch.cat(r) for r in zip(*(c.residuals for c in conds), strict=True)],
            mid=torch.cat([c.mid for c in conds]),
            content=None if conds[0].content is None else torch.cat([c.content for c in conds]),
            context=torch.cat([c.context for c in conds]),
        )


def key_frame_weights(position: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Linear interpolation weights ``[N, K]`` of frame positions ``[N]`` between the key frame
    positions ``keys [K]`` (increasing, same unit); clamped to the first / last key frame."""
    if len(keys) == 1:
        return torch.ones(len(position), 1, device=position.device, dtype=position.dtype)
    pos = position.clamp(keys[0], keys[-1])
    right = torch.searchsorted(keys, pos, right=True).clamp(1, len(keys) - 1)  # [N]
    lo, hi = keys[right - 1], keys[right]
    frac = ((pos - lo) / (hi - lo))[:, None]  # [N, 1]
    cols = torch.arange(len(keys), device=position.device)[None]
    return (cols == (right - 1)[:, None]) * (1 - frac) + (cols == right[:, None]) * frac


class ConditionBranch(nn.Module):
    """One modality's conditioning: z -> skip residuals, content vector and context tokens.

    With ``autoencoder.frame_channels`` > 0 the video branch also reads, for target frame i,
    z's channel group of its key frame (interpolated between the two around it), concatenated
    to z: the frame's own spatial layout enters the UNet directly.
    """

    def __init__(self, config: SignalDecoderConfig, latent_size: int, frame_aware: bool) -> None:
        super().__init__()
        d = config
        self.scale = d.vae_size // latent_size
        self.frame_index_scale = d.frame_index_scale
        self.frame_channels = d.frame_channels if frame_aware else 0
        self.num_groups = len(d.key_frames)
        # key frames in units of index / F; a tuple, not a buffer, so that a model built on the
        # meta device has them too
        self.key_fractions = tuple(k / d.num_frames for k in d.key_frames)
        widths = [max(8, c // 2) for c in d.block_out_channels]  # a half-width encoder per scale
        emb_dim = 4 * widths[0] if frame_aware else None
        self.index_embed = (
            nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if frame_aware
            else None
        )
        self.stem = nn.Conv2d(d.z_channels + self.frame_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        ch = widths[0]
        for i, width in enumerate(widths):
            self.levels.append(ResBlock(ch, width, emb_dim))
            ch = width
            self.downs.append(Downsample(ch) if i < len(widths) - 1 else nn.Identity())
        shapes, (mid_ch, _) = skip_shapes(d)
        resolutions = [d.vae_size // 2**i for i in range(len(widths))]
        self.skip_level = [resolutions.index(r) for _, r in shapes]
        self.skip_convs = nn.ModuleList(
            zero_module(nn.Conv2d(widths[lvl], c, 1))
            for lvl, (c, _) in zip(self.skip_level, shapes, strict=True)
        )
        self.mid_conv = zero_module(nn.Conv2d(widths[-1], mid_ch, 1))
        self.out_norm = group_norm(widths[-1])
        time_dim = 4 * d.block_out_channels[0]  # diffusers' time_embed_dim
        self.content = (
            nn.Sequential(
                nn.Linear(d.z_channels, time_dim),
                nn.SiLU(),
                zero_module(nn.Linear(time_dim, time_dim)),
            )
            if d.content_feature
            else None
        )
        dim = d.cross_attention_dim
        n_tokens = d.num_modality_tokens
        self.tokens = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.semantic = nn.Sequential(
            nn.Linear(d.semantic_dim, dim), nn.SiLU(), zero_module(nn.Linear(dim, dim))
        )

    def forward(
        self,
        z: torch.Tensor,
        s_other: torch.Tensor,
        class_emb: torch.Tensor | None,
        keep: torch.Tensor,
        frame_index: torch.Tensor | None = None,
    ) -> DecoderCondition:
        """
        Args:
            z: ``[N, C, h, w]`` this modality's perceptual latent.
            s_other: ``[N, D_s, s, s]`` the other modality's semantic feature.
            class_emb: ``[N, dim]`` or None (unlabelled data).
            keep: ``[N]`` 1 to condition, 0 for the null condition (all inputs zero).
            frame_index: ``[N]`` target frame index / F in [0, 1) (video only).
        """
        k = keep.to(z.dtype)
        z = z * k[:, None, None, None]
        emb = None
        if self.index_embed is not None:
            assert frame_index is not None, "the video branch needs frame indices"
            # docs/design.md §8.4: index / F is in [0, 1); scaled so that neighbours differ.
            sin = sinusoidal_embedding(frame_index * self.frame_index_scale, self.stem.out_channels)
            emb = self.index_embed(sin.to(z.dtype))
        z_in = z
        if self.frame_channels:  # z's last K*N channels -> [N, K, N, h, w] -> frame i's group
            keys = torch.tensor(self.key_fractions, device=z.device, dtype=torch.float32)
            w = key_frame_weights(frame_index.to(keys), keys)
            n = self.num_groups * self.frame_channels
            groups = z[:, z.shape[1] - n :].unflatten(1, (self.num_groups, self.frame_channels))
            z_in = torch.cat([z, torch.einsum("nk,nkchw->nchw", w.to(z.dtype), groups)], dim=1)
        h = self.stem(F.interpolate(z_in, scale_factor=self.scale, mode="nearest"))
        features = []
        for level, down in zip(self.levels, self.downs, strict=True):
            h = level(h, emb)
            features.append(h)
            h = down(h)
        residuals = [
            conv(features[lvl]) for conv, lvl in zip(self.skip_convs, self.skip_level, strict=True)
        ]
        mid = self.mid_conv(F.silu(self.out_norm(features[-1])))
        content = self.content(z.mean(dim=(2, 3))) if self.content is not None else None
        sem = self.semantic(rearrange(s_other, "n c h w -> n (h w) c")) * k[:, None, None]
        parts = [self.tokens.to(z.dtype)[None].expand(len(z), -1, -1) * k[:, None, None]]
        if class_emb is not None:
            parts.append(class_emb[:, None] * k[:, None, None])
        parts.append(sem)
        return DecoderCondition(residuals, mid, content, torch.cat(parts, dim=1))


class SignalDecoder(nn.Module):
    """The prediction (eps or v) for noisy VAE latents of frames and audio images; one UNet
    shared by both modalities (paper) or one each."""

    def __init__(self, config: SignalDecoderConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = d = config
        self.shared = d.shared
        unets = (
            {"shared": build_unet(d, gradient_checkpointing)}
            if self.shared
            else {m: build_unet(d, gradient_checkpointing) for m in MODALITIES}
        )
        self.unets = nn.ModuleDict(unets)
        self.branches = nn.ModuleDict(
            {
                "audio": ConditionBranch(d, d.audio_size, frame_aware=False),
                "video": ConditionBranch(d, d.video_size, frame_aware=True),
            }
        )
        self.class_embed = (
            nn.Embedding(d.num_classes, d.cross_attention_dim) if d.num_classes else None
        )

    def unet(self, modality: str) -> UNet2DConditionModel:
        return self.unets["shared" if self.shared else modality]

    def condition(
        self,
        modality: str,
        z: torch.Tensor,
        s_other: torch.Tensor,
        labels: torch.Tensor | None,
        keep: torch.Tensor,
        frame_index: torch.Tensor | None = None,
    ) -> DecoderCondition:
        class_emb = None
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this decoder is class-conditional: labels are required")
            class_emb = self.class_embed(labels.clamp(min=0))
        return self.branches[modality](z, s_other, class_emb, keep, frame_index)

    def predict(
        self, modality: str, x_t: torch.Tensor, t: torch.Tensor, cond: DecoderCondition
    ) -> torch.Tensor:
        """The prediction ``[N, 4, R, R]`` (eps or v) for noisy VAE latents ``x_t`` at ``t``."""
        return self.unet(modality)(
            x_t,
            t,
            encoder_hidden_states=cond.context,
            class_labels=cond.content,
            down_block_additional_residuals=tuple(cond.residuals),
            mid_block_additional_residual=cond.mid,
        ).sample

    def predict_both(
        self,
        x_audio: torch.Tensor,
        t_audio: torch.Tensor,
        cond_audio: DecoderCondition,
        x_video: torch.Tensor,
        t_video: torch.Tensor,
        cond_video: DecoderCondition,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both modalities; a shared UNet takes them as one batch (one pass, better occupancy)."""
        if not self.shared:
            return (
                self.predict("audio", x_audio, t_audio, cond_audio),
                self.predict("video", x_video, t_video, cond_video),
            )
        out = self.predict(
            "audio",
            torch.cat([x_audio, x_video]),
            torch.cat([t_audio, t_video]),
            DecoderCondition.cat([cond_audio, cond_video]),
        )
        return out[: len(x_audio)], out[len(x_audio) :]
