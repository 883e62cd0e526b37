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


class VAELatentCache:
    """The frozen VAE's posterior (mean, std) of every frame and of the audio image of each
    clip seen, kept in memory, so that each epoch after the first only draws from them
    (``train.cache_vae_latents``). Keyed by (path, start, flipped); for small datasets: the
    demo's 192 clips take 7 MB, a 256^2 clip of 16 frames 0.6 MB."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self.store: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def posteriors(
        self, keys: list[tuple], video: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``video [B, F, 3, S, S]``, ``image [B, 3, S, S]`` -> (mean, std) ``[B, F + 1, C, R, R]``
        (frames, then the audio image), encoding only the clips not seen before."""
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        if missing:
            b, f = len(missing), video.shape[1]
            images = torch.cat([video[missing].flatten(0, 1), image[missing]])
            dist = self.vae.encode(images.to(next(self.vae.parameters()).dtype)).latent_dist
            frames_mean, audio_mean = dist.mean.split([b * f, b])
            frames_std, audio_std = dist.std.split([b * f, b])
            mean = torch.cat([frames_mean.unflatten(0, (b, f)), audio_mean[:, None]], dim=1)
            std = torch.cat([frames_std.unflatten(0, (b, f)), audio_std[:, None]], dim=1)
            for j, i in enumerate(missing):
                self.store[keys[i]] = (mean[j], std[j])
        mean, std = zip(*(self.store[key] for key in keys), strict=True)
        return torch.stack(mean), torch.stack(std)


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
    cache: VAELatentCache | None = None,
    keys: list[tuple] | None = None,
) -> VAEInputs:
    """Clips -> VAE latents of key frames, target frames and the audio image, in one VAE pass.

    Args:
        video: ``[B, F, 3, S, S]`` in [-1, 1]; audio: ``[B, N]`` in [-1, 1] at data.sample_rate.
        num_targets: frames drawn per clip for the decoder (autoencoder.target_frames while
            training; increasing per clip).
        flip: ``[B]`` bool, mirror those clips' frames (training augmentation).
        cache, keys: draw the latents from cached posteriors of the clips named by ``keys``
            ((path, start) each) instead of encoding them (:class:`VAELatentCache`).
    """
    from mmldm.audio.mel import audio_image
    from mmldm.models.vae import encode

    b, f = video.shape[:2]
    if flip is not None:
        video = torch.where(flip[:, None, None, None, None], video.flip(-1), video)
    image = audio_image(audio, cfg.data).to(video.dtype)
    scores = torch.rand(b, f, generator=generator, device=video.device)
    target_index = scores.argsort(dim=1)[:, :num_targets].sort(dim=1).values  # i < j
    key_frames = cfg.autoencoder.key_frames
    targets = torch.gather(
        video, 1, target_index[:, :, None, None, None].expand(-1, -1, *video.shape[2:])
    )
    if cache is not None:
        if keys is None or len(keys) != b:
            raise ValueError("vae_inputs: a latent cache needs one key (path, start) per clip")
        flipped = [False] * b if flip is None else flip.tolist()
        names = [(*key, mirrored) for key, mirrored in zip(keys, flipped, strict=True)]
        mean, std = cache.posteriors(names, video, image)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = (mean + std * noise) * vae.config.scaling_factor  # [B, F + 1, C, R, R]: a sample
        index = target_index[:, :, None, None, None].expand(-1, -1, *z.shape[2:])
        key_lat, tgt_lat, audio_lat = z[:, key_frames], torch.gather(z, 1, index), z[:, f]
    else:
        k, n = len(key_frames), num_targets
        images = torch.cat([video[:, key_frames].flatten(0, 1), targets.flatten(0, 1), image])
        latents = encode(vae, images.to(next(vae.parameters()).dtype))  # one VAE batch
        key_lat, tgt_lat, audio_lat = latents.split([b * k, b * n, b])
        key_lat, tgt_lat = key_lat.unflatten(0, (b, k)), tgt_lat.unflatten(0, (b, n))
    return VAEInputs(
        key_latents=key_lat,
        audio_image=image,
        audio_latent=audio_lat,
        target_index=target_index,
        target_frames=targets,
        target_latents=tgt_lat,
    )
