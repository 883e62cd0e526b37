"""Stage 1: the hierarchical multi-modal autoencoder (paper sec. 3.1, DESIGN.md section 4).

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

from mmldm.config import Config
from mmldm.models.encoders import AudioEncoder, DiagonalGaussian, Projector, VideoEncoder
from mmldm.models.heads import ClassificationHead, ContrastiveHead
from mmldm.models.signal_decoder import SignalDecoder


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

    def __init__(self, cfg: Config, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        ae, vae_ch, r = cfg.autoencoder, cfg.vae.latent_channels, cfg.vae_latent_size
        self.video_encoder = VideoEncoder(
            vae_ch,
            ae.latent_channels,
            ae.video_widths,
            ae.num_res_blocks,
            ae.head_channels,
            num_key_frames=len(ae.key_frames),
            latent_size=r,
            per_frame=ae.video_latent == "key_frames",
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
            ClassificationHead(ae.semantic_dim, ae.semantic_size, cfg.data.num_classes)
            if cfg.data.num_classes and ae.cl_weight > 0
            else None
        )
        self.contrastive = (
            ContrastiveHead(
                ae.semantic_dim, ae.semantic_size, ae.contrastive_dim, ae.temperature_init
            )
            if ae.co_weight > 0
            else None
        )
        self.decoder = SignalDecoder(cfg, gradient_checkpointing)

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
        if self.cfg.autoencoder.detach_projector_input:  # published: semantics don't train z
            z_a, z_v = z_a.detach(), z_v.detach()
        return self.audio_projector(z_a), self.video_projector(z_v)

    def predict_class(self, s_a: torch.Tensor, s_v: torch.Tensor) -> torch.Tensor | None:
        """Class predicted from the pair (the decoder's class at generation time), ``[B]``."""
        if self.classifier is None:
            return None
        return self.classifier(s_a, s_v).argmax(dim=-1)


@dataclass
class VAEInputs:
    """What the autoencoder sees of a batch of clips, in VAE latent space."""

    key_latents: torch.Tensor  # [B, K, 4, R, R]
    audio_image: torch.Tensor  # [B, 3, S, S] in [-1, 1]
    audio_latent: torch.Tensor  # [B, 4, R, R]
    target_index: torch.Tensor  # [B, n] long, increasing per clip
    target_frames: torch.Tensor  # [B, n, 3, S, S] in [-1, 1]
    target_latents: torch.Tensor  # [B, n, 4, R, R]


@torch.no_grad()
def vae_inputs(
    vae,
    cfg: Config,
    video: torch.Tensor,
    audio: torch.Tensor,
    num_targets: int,
    *,
    flip: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> VAEInputs:
    """Clips -> VAE latents of key frames, target frames and the audio image, in one VAE pass.

    Args:
        video: ``[B, F, 3, S, S]`` in [-1, 1]; audio: ``[B, N]`` in [-1, 1] at data.sample_rate.
        num_targets: frames drawn per clip for the decoder (autoencoder.target_frames while
            training; increasing per clip).
        flip: ``[B]`` bool, mirror those clips' frames (training augmentation).
    """
    from mmldm.audio.mel import audio_image
    from mmldm.models.vae import encode

    b, f = video.shape[:2]
    if flip is not None:
        video = torch.where(flip[:, None, None, None, None], video.flip(-1), video)
    image = audio_image(audio, cfg.data).to(video.dtype)
    scores = torch.rand(b, f, generator=generator, device=video.device)
    target_index = scores.argsort(dim=1)[:, :num_targets].sort(dim=1).values  # i < j
    key = video[:, cfg.autoencoder.key_frames]
    targets = torch.gather(
        video, 1, target_index[:, :, None, None, None].expand(-1, -1, *video.shape[2:])
    )
    k, n = key.shape[1], num_targets
    images = torch.cat([key.flatten(0, 1), targets.flatten(0, 1), image])  # one VAE batch
    latents = encode(vae, images.to(next(vae.parameters()).dtype))
    key_lat, tgt_lat, audio_lat = latents.split([b * k, b * n, b])
    return VAEInputs(
        key_latents=key_lat.unflatten(0, (b, k)),
        audio_image=image,
        audio_latent=audio_lat,
        target_index=target_index,
        target_frames=targets,
        target_latents=tgt_lat.unflatten(0, (b, n)),
    )
