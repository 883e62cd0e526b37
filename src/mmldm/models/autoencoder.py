"""Stage 1: the hierarchical multi-modal autoencoder (paper sec. 3.1, docs/design.md §4).

Inputs are Stable-Diffusion-VAE latents (``R = resolution / 8``; 32 in the paper):
    key frames ``[B, K, 4, R, R]`` (K = 4: frames 0, 5, 10, 15), audio image ``[B, 4, R, R]``.
Perceptual latents: z_v ``[B, C, R/f_v, R/f_v]``, z_a ``[B, C, R/f_a, R/f_a]`` (16x16x16, 16x8x8).
Semantic features: s_v, s_a ``[B, D, s, s]`` (768x2x2), trained by a classification head on the
pair and a contrastive head. The signal decoder reconstructs VAE latents by diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmldm.models.encoders import AudioEncoder, DiagonalGaussian, Projector, VideoEncoder
from mmldm.models.heads import ClassificationHead, ContrastiveHead
from mmldm.models.signal_decoder import SignalDecoder, SignalDecoderConfig


@dataclass(frozen=True)
class MultiModalAutoencoderConfig:
    """Everything the autoencoder's networks need (the experiment config composes it:
    ``Config.autoencoder_network``); the signal decoder's own config is nested."""

    vae_channels: int  # channels of the VAE latents it reads (4)
    vae_size: int  # R: VAE latents are vae_channels x R x R (32)
    latent_channels: int  # C of z_v and z_a (16)
    key_frames: tuple[int, ...]  # frames the video encoder sees (0, 5, 10, 15)
    frame_channels: int  # > 0: z_v's last len(key_frames) * N channels are per key frame
    video_widths: tuple[int, ...]
    audio_widths: tuple[int, ...]
    num_res_blocks: int
    head_channels: int
    semantic_dim: int  # s_a, s_v: semantic_dim x semantic_size x semantic_size (768 x 2 x 2)
    semantic_size: int
    projector_width: int
    video_projector_mults: tuple[int, ...]
    audio_projector_mults: tuple[int, ...]
    video_projector_blocks: int
    audio_projector_blocks: int
    projector_head_channels: int
    detach_projector_input: bool  # the semantic losses do not train the encoders (published)
    num_classes: int  # > 0: a classification head on (s_a, s_v)
    contrastive_dim: int  # > 0: a contrastive head mapping s_a, s_v to this many dimensions
    temperature_init: float
    decoder: SignalDecoderConfig


@dataclass
class Encoded:
    post_a: DiagonalGaussian
    post_v: DiagonalGaussian
    z_a: torch.Tensor  # [B, C, h_a, w_a]
    z_v: torch.Tensor  # [B, C, h_v, w_v]
    s_a: torch.Tensor  # [B, D, s, s]
    s_v: torch.Tensor  # [B, D, s, s]


class MultiModalAutoencoder(nn.Module):
    """Encoders, projectors, heads and the shared signal decoder (the discriminator is apart)."""

    def __init__(
        self, config: MultiModalAutoencoderConfig, gradient_checkpointing: bool = False
    ) -> None:
        super().__init__()
        self.config = ae = config
        vae_ch, r = ae.vae_channels, ae.vae_size
        self.video_encoder = VideoEncoder(
            vae_ch,
            ae.latent_channels,
            ae.video_widths,
            ae.num_res_blocks,
            ae.head_channels,
            num_key_frames=len(ae.key_frames),
            latent_size=r,
            frame_channels=ae.frame_channels,
        )
        self.audio_encoder = AudioEncoder(
            vae_ch, ae.latent_channels, ae.audio_widths, ae.num_res_blocks, ae.head_channels
        )
        self.video_projector = Projector(
            ae.latent_channels,
            ae.semantic_dim,
            ae.projector_width,
            ae.video_projector_mults,
            ae.video_projector_blocks,
            ae.projector_head_channels,
            ae.semantic_size,
        )
        self.audio_projector = Projector(
            ae.latent_channels,
            ae.semantic_dim,
            ae.projector_width,
            ae.audio_projector_mults,
            ae.audio_projector_blocks,
            ae.projector_head_channels,
            ae.semantic_size,
        )
        # Without labels (AudioSet) or with the ablation weight at 0, there is no head.
        self.classifier = (
            ClassificationHead(ae.semantic_dim, ae.semantic_size, ae.num_classes)
            if ae.num_classes
            else None
        )
        self.contrastive = (
            ContrastiveHead(
                ae.semantic_dim, ae.semantic_size, ae.contrastive_dim, ae.temperature_init
            )
            if ae.contrastive_dim
            else None
        )
        self.decoder = SignalDecoder(ae.decoder, gradient_checkpointing)

    def encode(
        self,
        key_latents: torch.Tensor,
        audio_latent: torch.Tensor,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> Encoded:
        """VAE latents of the key frames and the audio image -> z and s of both modalities.

        ``sample``: draw z from the posteriors (training) or take their means (caching latents).
        """
        post_v = self.video_encoder(key_latents)
        post_a = self.audio_encoder(audio_latent)
        z_v = post_v.sample(generator) if sample else post_v.mean
        z_a = post_a.sample(generator) if sample else post_a.mean
        s_a, s_v = self.semantics(z_a, z_v)
        return Encoded(post_a, post_v, z_a, z_v, s_a, s_v)

    def semantics(self, z_a: torch.Tensor, z_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project perceptual latents into the shared semantic space."""
        if self.config.detach_projector_input:  # published: semantics don't train z
            z_a, z_v = z_a.detach(), z_v.detach()
        return self.audio_projector(z_a), self.video_projector(z_v)

    def predict_class(self, s_a: torch.Tensor, s_v: torch.Tensor) -> torch.Tensor | None:
        """Class predicted from the pair (the decoder's class at generation time), ``[B]``."""
        if self.classifier is None:
            return None
        return self.classifier(s_a, s_v).argmax(dim=-1)
