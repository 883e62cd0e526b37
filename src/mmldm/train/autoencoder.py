"""Stage 1 training: the multi-modal autoencoder's loss (paper eq. 3) and its training loop.

    L = L_mse + l_cl * L_cl + l_co * L_co + l_kl * (KL_a + KL_v) + l_gan * L_gan

L_mse is the signal decoder's eps-prediction error (v-prediction error with
``diffusion.prediction_type = v_prediction``) on ``autoencoder.target_frames`` frames per clip
(2 in the paper) and on the audio image, with independent timesteps per modality. The
adversarial term judges VAE-decoded one-step x_0 estimates WITH their gradient path to the
decoder (docs/design.md §8.2: the published code decoded them under no-grad, so its GAN
never reached the decoder).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from torch import nn

from mmldm.codec import (
    Codec,
    VAEInputs,
    VAELatentCache,
    adopt_vae_scaling,
    autoencoder_config,
    batch_inputs,
    load_vae,
)
from mmldm.config import Config
from mmldm.diffusion.schedule import add_noise, alphas_cumprod, predict_x0, training_target
from mmldm.models.autoencoder import Encoded, MultiModalAutoencoder
from mmldm.models.discriminator import (
    TripletDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    make_triplets,
)
from mmldm.models.signal_decoder import SignalDecoder
from mmldm.models.vae import decode as vae_decode
from mmldm.networks import discriminator_config
from mmldm.train.common import (
    adversarial_stage,
    initial_weights,
    make_optimizer,
    start_clip_stage,
    train_step,
    write_reconstructions,
)
from mmldm.weights import CheckpointError, load_weights

log = logging.getLogger(__name__)


@dataclass
class GanInputs:
    """Real and reconstructed pixels for the triplet discriminator."""

    audio: torch.Tensor  # [B, 3, S, S]
    frames: torch.Tensor  # [B, 2, 3, S, S]
    audio_hat: torch.Tensor  # [B, 3, S, S], carries the decoder's gradient
    frames_hat: torch.Tensor  # [B, 2, 3, S, S], carries the decoder's gradient

    def triplets(self, detach: bool) -> tuple[torch.Tensor, torch.Tensor]:
        a_hat, v_hat = self.audio_hat, self.frames_hat
        if detach:
            a_hat, v_hat = a_hat.detach(), v_hat.detach()
        return make_triplets(
            self.audio, self.frames[:, 0], self.frames[:, 1], a_hat, v_hat[:, 0], v_hat[:, 1]
        )


def load_pretrained_unet(unet: UNet2DConditionModel, path: str | Path) -> None:
    """Copy Stable Diffusion 1.x UNet weights from a local diffusers folder into ``unet``."""
    path = Path(path)
    folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{path}: not a diffusers UNet folder (config.json missing); config key "
            "decoder.pretrained_unet"
        )
    pretrained = UNet2DConditionModel.from_pretrained(folder, local_files_only=True)
    load_weights(unet, pretrained.state_dict(), source=str(folder))


class _Noised(NamedTuple):
    """One modality's decoder pass on noised latents (audio: B images; video: B*n frames)."""

    xt: torch.Tensor  # [B or B*n, 4, R, R]: the noised VAE latents
    t: torch.Tensor  # [B or B*n] long timesteps in [0, num_train_timesteps)
    out: torch.Tensor  # [B or B*n, 4, R, R]: the decoder's eps (paper) or v prediction

    def x0_hat(self, abar: torch.Tensor, kind: str) -> torch.Tensor:
        """The one-step x_0 estimate from the prediction, ``[B or B*n, 4, R, R]``."""
        return predict_x0(self.xt, self.out, self.t, abar, kind)


def autoencoder_loss(
    model: MultiModalAutoencoder,
    inputs: VAEInputs,
    labels: torch.Tensor,
    cfg: Config,
    *,
    vae: nn.Module | None = None,
    discriminator: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float], GanInputs | None]:
    """The autoencoder's loss on one batch.

    Args:
        inputs: from :func:`vae_inputs`: ``autoencoder.target_frames`` frames per clip (the
            paper decodes 2); the discriminator sees two of them (``target_frames`` pixels are
            used only with a discriminator).
        labels: ``[B]`` class indices (-1: unlabelled).
        vae, discriminator: given together to add the generator side of the adversarial loss.
    Returns:
        (total loss, logged terms, the pixels the discriminator step needs or None).
    """
    # the terms in eq. 3's order; the calls' order is also that of the random draws (condition
    # dropout, timesteps, noise, the discriminator's frame pair), which seeded runs reproduce
    ae = cfg.autoencoder
    abar = alphas_cumprod(cfg.diffusion).to(inputs.audio_latent.device)
    enc = model.encode(inputs.key_latents, inputs.audio_latent)
    logs: dict[str, float] = {}
    conditions = _decoder_conditions(model.decoder, enc, inputs, labels, cfg)
    loss, audio, video = _diffusion_term(model.decoder, conditions, inputs, abar, cfg, logs)
    loss = loss + ae.kl_weight * _kl_term(enc, logs)
    labeled = labels >= 0
    if model.classifier is not None and labeled.any():
        cl = _classification_term(model.classifier, enc, labels, labeled, logs)
        loss = loss + ae.cl_weight * cl
    # InfoNCE over the batch: a clip's negatives are the other clips
    if model.contrastive is not None and len(inputs.target_latents) > 1:
        loss = loss + ae.co_weight * _contrastive_term(model.contrastive, enc, logs)
    gan = None
    if discriminator is not None and vae is not None:
        kind = cfg.diffusion.prediction_type
        g, gan = _adversarial_term(audio, video, inputs, abar, kind, vae, discriminator, logs)
        loss = loss + ae.gan_weight * g
    logs["loss"] = loss.item()
    return loss, logs, gan


def _decoder_conditions(
    decoder: SignalDecoder,
    enc: Encoded,
    inputs: VAEInputs,
    labels: torch.Tensor,
    cfg: Config,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's conditions for the audio image (``B``) and the ``B*n`` target frames,
    each modality's dropped (zeroed) with probability ``autoencoder.cond_drop_prob`` per clip
    (docs/design.md §4, "Signal decoder"), ``[B or B*n, ...]`` each. Draws the dropout first:
    the diffusion term's timesteps and noise come after it."""
    b, n = inputs.target_latents.shape[:2]
    device, drop = inputs.audio_latent.device, cfg.autoencoder.cond_drop_prob
    # Condition dropout per modality (classifier-free guidance at decoding time).
    keep_a = (torch.rand(b, device=device) >= drop).float()
    keep_v = (torch.rand(b, device=device) >= drop).float()
    cond_a = decoder.condition("audio", enc.z_a, enc.s_v, labels, keep_a)
    cond_v = decoder.condition(
        "video",
        enc.z_v.repeat_interleave(n, 0),  # [B*n, ...]: each clip's z for each of its targets
        enc.s_a.repeat_interleave(n, 0),
        labels.repeat_interleave(n, 0),
        keep_v.repeat_interleave(n, 0),
        frame_index=inputs.target_index.flatten().float() / cfg.data.num_frames,
    )
    return cond_a, cond_v


def _diffusion_term(
    decoder: SignalDecoder,
    conditions: tuple[torch.Tensor, torch.Tensor],
    inputs: VAEInputs,
    abar: torch.Tensor,
    cfg: Config,
    logs: dict[str, float],
) -> tuple[torch.Tensor, _Noised, _Noised]:
    """L_mse of paper eq. 3 (docs/design.md §4, "Signal decoder"): the decoder's eps- (or v-)
    prediction error on the noised audio image and ``n`` target frames per clip, with
    independent timesteps per modality; logs ``loss_mse_audio`` and ``loss_mse_video``.

    Returns:
        (MSE audio + MSE video, a scalar >= 0; the audio pass; the video pass, ``B*n`` frames).
    """
    b, n = inputs.target_latents.shape[:2]
    device = inputs.audio_latent.device
    cond_a, cond_v = conditions
    x0_a, x0_v = inputs.audio_latent, inputs.target_latents.flatten(0, 1)
    t_a = torch.randint(0, len(abar), (b,), device=device)  # independent per modality
    t_v = torch.randint(0, len(abar), (b * n,), device=device)
    noise_a, noise_v = torch.randn_like(x0_a), torch.randn_like(x0_v)
    xt_a, xt_v = add_noise(x0_a, noise_a, t_a, abar), add_noise(x0_v, noise_v, t_v, abar)
    kind = cfg.diffusion.prediction_type  # the decoder outputs eps (paper) or v
    out_a, out_v = decoder.predict_both(xt_a, t_a, cond_a, xt_v, t_v, cond_v)
    mse_a = F.mse_loss(out_a.float(), training_target(x0_a, noise_a, t_a, abar, kind).float())
    mse_v = F.mse_loss(out_v.float(), training_target(x0_v, noise_v, t_v, abar, kind).float())
    logs.update(loss_mse_audio=mse_a.item(), loss_mse_video=mse_v.item())
    return mse_a + mse_v, _Noised(xt_a, t_a, out_a), _Noised(xt_v, t_v, out_v)


def _kl_term(enc: Encoded, logs: dict[str, float]) -> torch.Tensor:
    """KL_a + KL_v of paper eq. 3: each posterior's KL to N(0, I), a batch mean (docs/design.md
    §4, "Video encoder"); a scalar >= 0, logged as ``kl``."""
    kl = enc.post_a.kl().mean() + enc.post_v.kl().mean()
    logs["kl"] = kl.item()
    return kl


def _classification_term(
    classifier: nn.Module,
    enc: Encoded,
    labels: torch.Tensor,
    labeled: torch.Tensor,
    logs: dict[str, float],
) -> torch.Tensor:
    """L_cl of paper eq. 3: cross-entropy of the head on (s_a, s_v) over the labelled clips
    (``labeled``, a ``[B]`` bool mask with at least one True; docs/design.md §4, "Heads");
    logs ``loss_cl`` and ``class_acc`` (in [0, 1])."""
    logits = classifier(enc.s_a, enc.s_v)
    cl = F.cross_entropy(logits[labeled].float(), labels[labeled])
    logs["loss_cl"] = cl.item()
    logs["class_acc"] = float((logits[labeled].argmax(-1) == labels[labeled]).float().mean())
    return cl


def _contrastive_term(contrastive: nn.Module, enc: Encoded, logs: dict[str, float]) -> torch.Tensor:
    """L_co of paper eq. 3: the symmetric InfoNCE loss between s_a and s_v over the batch
    (docs/design.md §4, "Heads"); a scalar >= 0, logged as ``loss_co``."""
    co = contrastive.loss(enc.s_a.float(), enc.s_v.float())
    logs["loss_co"] = co.item()
    return co


def _adversarial_term(
    audio: _Noised,
    video: _Noised,
    inputs: VAEInputs,
    abar: torch.Tensor,
    kind: str,
    vae: nn.Module,
    discriminator: nn.Module,
    logs: dict[str, float],
) -> tuple[torch.Tensor, GanInputs]:
    """The generator side of L_gan in paper eq. 3: hinge loss of the discriminator on the
    fully reconstructed triplet, whose pixels keep their gradient path to the decoder
    (docs/design.md §8.2); logged as ``loss_gan_g``.

    Returns:
        (the hinge term, a scalar; the real and reconstructed pixels, in [-1, 1] for the real
        ones, that the discriminator step needs).
    """
    b, n = inputs.target_latents.shape[:2]
    # the triplet <a, v_i, v_j> (i < j) takes two of the n targets (increasing per clip)
    pair = torch.randperm(n, device=inputs.audio_latent.device)[:2].sort().values
    x0_hat_a = audio.x0_hat(abar, kind)
    x0_hat_v = video.x0_hat(abar, kind).unflatten(0, (b, n))[:, pair]
    pixels = vae_decode(vae, torch.cat([x0_hat_a, x0_hat_v.flatten(0, 1)]))  # with gradient
    gan = GanInputs(
        audio=inputs.audio_image,
        frames=inputs.target_frames[:, pair],
        audio_hat=pixels[:b],
        frames_hat=pixels[b:].unflatten(0, (b, 2)),
    )
    _, fakes = gan.triplets(detach=False)
    g = hinge_g_loss(discriminator(fakes[:b]))  # <a^, v^_i, v^_j> should pass as real
    logs["loss_gan_g"] = g.item()
    return g, gan


def discriminator_loss(discriminator: nn.Module, gan: GanInputs) -> torch.Tensor:
    """Hinge loss on the real triplet and the four fakes (reconstructions detached)."""
    real, fakes = gan.triplets(detach=True)
    return hinge_d_loss(discriminator(real), discriminator(fakes))


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


class Objective(nn.Module):
    """The loss as the forward of one module, so that DDP sees one forward per backward.

    The frozen VAE and the discriminator are held outside the module's parameters (the
    discriminator has its own optimizer; its gradients from this loss are cleared before its
    own step).
    """

    def __init__(self, model: MultiModalAutoencoder, cfg: Config) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        self.aux: dict[str, nn.Module | None] = {"vae": None, "discriminator": None}

    def forward(self, inputs: VAEInputs, labels: torch.Tensor, gan_on: bool):
        return autoencoder_loss(
            self.model,
            inputs,
            labels,
            self.cfg,
            vae=self.aux["vae"] if gan_on else None,
            discriminator=self.aux["discriminator"] if gan_on else None,
        )


def autoencoder_step(
    accelerator: Accelerator,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: VAEInputs,
    labels: torch.Tensor,
    cfg: Config,
    step: int,
    disc: nn.Module | None = None,
    disc_opt: torch.optim.Optimizer | None = None,
) -> dict[str, float]:
    """One training step of the autoencoder (:class:`Objective`) and, from
    ``discriminator.start_step`` on, of the discriminator; returns the logs. The modules and
    optimizers as ``accelerator`` prepared them."""
    gan_on = disc is not None and step >= cfg.discriminator.start_step
    logs, _ = train_step(
        accelerator,
        objective,
        opt,
        lambda: objective(inputs, labels, gan_on),
        grad_clip=cfg.train.autoencoder.grad_clip,
        step=step,
        disc=disc if gan_on else None,
        disc_opt=disc_opt,
        disc_loss=lambda gan: discriminator_loss(disc, gan),
    )
    return logs


def train_autoencoder(
    cfg: Config,
    data: str | Path,
    run: str | Path,
    *,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    max_steps: int | None = None,
) -> Path:
    """Train stage 1 into the run folder ``run``; returns the last checkpoint's folder."""
    run = Path(run)
    accelerator, dataset = start_clip_stage(cfg, "autoencoder", data, cache_dir, run, resume)
    vae = load_vae(cfg.vae).to(accelerator.device).eval().requires_grad_(False)
    cfg = adopt_vae_scaling(cfg, vae)  # stored in every checkpoint: sampling rebuilds the VAE
    with initial_weights(cfg):
        model = MultiModalAutoencoder(autoencoder_config(cfg), cfg.train.gradient_checkpointing)
    if cfg.decoder.pretrained_unet and not resume:  # the paper starts from SD 1.x's UNet
        for unet in model.decoder.unets.values():
            load_pretrained_unet(unet, cfg.decoder.pretrained_unet)
    objective = Objective(model, cfg)
    opt = make_optimizer(model.parameters(), cfg.train.autoencoder)
    with initial_weights(cfg):
        gan = cfg.autoencoder.gan_weight > 0
        disc = TripletDiscriminator(discriminator_config(cfg)) if gan else None
    objective.aux["vae"] = vae  # decodes the adversarial term's pixels (used with a discriminator)
    loop, objective, opt, disc, disc_opt = adversarial_stage(
        accelerator,
        cfg,
        "autoencoder",
        run,
        dataset,
        objective,
        opt,
        {"autoencoder": model, "vae": vae},
        disc,
        resume=resume,
        max_steps=max_steps,
    )
    cache = VAELatentCache(vae) if cfg.train.cache_vae_latents else None
    previews = Codec(cfg, model, vae)  # one codec: its vocoder is loaded at the first preview
    for batch in loop:
        video, audio = batch["video"], batch["audio"]
        inputs = batch_inputs(batch, vae, cfg, cfg.autoencoder.target_frames, cache)
        logs = autoencoder_step(
            accelerator, objective, opt, inputs, batch["label"], cfg, loop.step, disc, disc_opt
        )
        loop.end_step(logs)
        loop.preview(functools.partial(write_reconstructions, previews, video, audio), model)
    return loop.close()
