"""Stage 0: adapt the KL-VAE to the data (paper: fine-tune its decoder per dataset on video
frames and audio images, since Stable Diffusion's VAE never saw audio images), or train a small
AutoencoderKL from scratch for small configs.

Loss: L1 reconstruction + kl_weight * KL (only when the encoder trains) + disc_weight * hinge GAN
with a PatchGAN discriminator (optional, ``vae.disc_weight > 0``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from mmldm.audio.mel import audio_image
from mmldm.codec import adopt_vae_scaling, load_vae
from mmldm.config import Config
from mmldm.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from mmldm.train.common import (
    adversarial_stage,
    initial_weights,
    make_optimizer,
    start_clip_stage,
    train_step,
)

log = logging.getLogger(__name__)

FRAMES_PER_CLIP = 2  # frames drawn per clip, with the clip's audio image


class VAEObjective(nn.Module):
    """Reconstruction (+ KL) (+ generator GAN term) of a batch of images, as one forward."""

    def __init__(self, vae: nn.Module, cfg: Config) -> None:
        super().__init__()
        self.vae, self.cfg = vae, cfg
        self.aux: dict[str, nn.Module | None] = {"discriminator": None}

    def forward(self, images: torch.Tensor):
        c = self.cfg.vae
        posterior = self.vae.encode(images).latent_dist
        z = posterior.sample() if not c.train_decoder_only else posterior.mean.detach()
        recon = self.vae.decode(z).sample
        rec = F.l1_loss(recon.float(), images.float())
        loss, logs = rec, {"loss_rec": rec.item()}
        if not c.train_decoder_only:
            kl = posterior.kl().mean()
            loss = loss + c.kl_weight * kl
            logs["kl"] = kl.item()
        disc = self.aux["discriminator"]
        if disc is not None:
            g = hinge_g_loss(disc(recon))
            loss = loss + c.disc_weight * g
            logs["loss_gan_g"] = g.item()
        logs["loss"] = loss.item()
        return loss, logs, recon


def clip_images(cfg: Config, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Training images of a batch: 2 random frames per clip and the clip's audio image."""
    b, f = video.shape[:2]
    pick = torch.rand(b, f, device=video.device).argsort(dim=1)[:, :FRAMES_PER_CLIP]
    frames = torch.gather(video, 1, pick[:, :, None, None, None].expand(-1, -1, *video.shape[2:]))
    return torch.cat([frames.flatten(0, 1), audio_image(audio, cfg.data).to(video.dtype)])


@torch.no_grad()
def calibrated_scaling(cfg: Config, vae: nn.Module, images: torch.Tensor) -> Config:
    """A VAE trained from scratch gets its own latent scale (latent-diffusion practice: 1 / std
    of the latents), stored in the config it is saved with, so that later stages see unit-scale
    latents as they do with Stable Diffusion's 0.18215."""
    import dataclasses

    std = vae.encode(images).latent_dist.sample().float().std().item()
    factor = 1.0 / max(std, 1e-6)
    vae.register_to_config(scaling_factor=factor)
    log.info("VAE latent std %.4f: scaling_factor set to %.5f", std, factor)
    return dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scaling_factor=factor))


def vae_step(
    accelerator: Accelerator,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    cfg: Config,
    step: int,
    disc: nn.Module | None = None,
    disc_opt: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """One training step of the VAE on ``images`` ``[N, 3, S, S]`` in [-1, 1]
    (:func:`clip_images`), then of its patch discriminator when there is one; returns the logs.
    The modules and optimizers as ``accelerator`` prepared them."""
    logs, _ = train_step(
        accelerator,
        objective,
        opt,
        lambda: objective(images),
        grad_clip=cfg.train.vae.grad_clip,
        step=step,
        disc=disc,
        disc_opt=disc_opt,
        disc_loss=lambda recon: hinge_d_loss(disc(images), disc(recon.detach())),
    )
    return logs


def train_vae(
    cfg: Config,
    data: str | Path,
    run: str | Path,
    *,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    max_steps: int | None = None,
) -> Path:
    """Train stage 0 into ``run``; returns the last checkpoint's folder."""
    run = Path(run)
    accelerator, dataset = start_clip_stage(cfg, "vae", data, cache_dir, run, resume)
    with initial_weights(cfg):
        vae = load_vae(cfg.vae)
    cfg = adopt_vae_scaling(cfg, vae)
    if cfg.vae.train_decoder_only:  # the paper: encoder frozen, so its latents keep their meaning
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    objective = VAEObjective(vae, cfg)
    opt = make_optimizer(vae.parameters(), cfg.train.vae)
    with initial_weights(cfg):
        disc = PatchDiscriminator() if cfg.vae.disc_weight > 0 else None
    loop, objective, opt, disc, disc_opt = adversarial_stage(
        accelerator,
        cfg,
        "vae",
        run,
        dataset,
        objective,
        opt,
        {"vae": vae},
        disc,
        resume=resume,
        max_steps=max_steps,
    )
    for batch in loop:
        images = clip_images(cfg, batch["video"], batch["audio"])
        logs = vae_step(accelerator, objective, opt, images, cfg, loop.step, disc, disc_opt)
        if loop.saves_next() and not cfg.vae.train_decoder_only:
            # every checkpoint carries the latent scale of its own encoder
            loop.cfg = calibrated_scaling(cfg, accelerator.unwrap_model(objective).vae, images)
        loop.end_step(logs)
    return loop.close()
