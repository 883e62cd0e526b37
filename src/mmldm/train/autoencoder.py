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

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from torch import nn

from mmldm.codec import Codec, VAEInputs, VAELatentCache, adopt_vae_scaling, load_vae, vae_inputs
from mmldm.config import Config
from mmldm.diffusion.schedule import add_noise, alphas_cumprod, predict_x0, training_target
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.discriminator import (
    TripletDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    make_triplets,
)
from mmldm.models.vae import decode as vae_decode
from mmldm.networks import autoencoder_config, discriminator_config
from mmldm.train.common import (
    adversarial_stage,
    make_accelerator,
    make_optimizer,
    train_step,
    training_dataset,
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
    ae = cfg.autoencoder
    b, n = inputs.target_latents.shape[:2]
    device = inputs.audio_latent.device
    abar = alphas_cumprod(cfg.diffusion).to(device)
    enc = model.encode(inputs.key_latents, inputs.audio_latent)
    logs: dict[str, float] = {}

    # Condition dropout per modality (classifier-free guidance at decoding time).
    keep_a = (torch.rand(b, device=device) >= ae.cond_drop_prob).float()
    keep_v = (torch.rand(b, device=device) >= ae.cond_drop_prob).float()
    labeled = labels >= 0
    cond_a = model.decoder.condition("audio", enc.z_a, enc.s_v, labels, keep_a)
    cond_v = model.decoder.condition(
        "video",
        enc.z_v.repeat_interleave(n, 0),  # [B*n, ...]: each clip's z for each of its targets
        enc.s_a.repeat_interleave(n, 0),
        labels.repeat_interleave(n, 0),
        keep_v.repeat_interleave(n, 0),
        frame_index=inputs.target_index.flatten().float() / cfg.data.num_frames,
    )
    x0_a, x0_v = inputs.audio_latent, inputs.target_latents.flatten(0, 1)
    t_a = torch.randint(0, len(abar), (b,), device=device)  # independent per modality
    t_v = torch.randint(0, len(abar), (b * n,), device=device)
    noise_a, noise_v = torch.randn_like(x0_a), torch.randn_like(x0_v)
    xt_a, xt_v = add_noise(x0_a, noise_a, t_a, abar), add_noise(x0_v, noise_v, t_v, abar)
    kind = cfg.diffusion.prediction_type  # the decoder outputs eps (paper) or v
    out_a, out_v = model.decoder.predict_both(xt_a, t_a, cond_a, xt_v, t_v, cond_v)
    mse_a = F.mse_loss(out_a.float(), training_target(x0_a, noise_a, t_a, abar, kind).float())
    mse_v = F.mse_loss(out_v.float(), training_target(x0_v, noise_v, t_v, abar, kind).float())
    loss = mse_a + mse_v
    logs.update(loss_mse_audio=mse_a.item(), loss_mse_video=mse_v.item())

    kl = enc.post_a.kl().mean() + enc.post_v.kl().mean()
    loss = loss + ae.kl_weight * kl
    logs["kl"] = kl.item()
    if model.classifier is not None and labeled.any():
        logits = model.classifier(enc.s_a, enc.s_v)
        cl = F.cross_entropy(logits[labeled].float(), labels[labeled])
        loss = loss + ae.cl_weight * cl
        logs["loss_cl"] = cl.item()
        logs["class_acc"] = float((logits[labeled].argmax(-1) == labels[labeled]).float().mean())
    if model.contrastive is not None and b > 1:
        co = model.contrastive.loss(enc.s_a.float(), enc.s_v.float())
        loss = loss + ae.co_weight * co
        logs["loss_co"] = co.item()

    gan = None
    if discriminator is not None and vae is not None:
        # the triplet <a, v_i, v_j> (i < j) takes two of the n targets (increasing per clip)
        pair = torch.randperm(n, device=device)[:2].sort().values
        x0_hat_a = predict_x0(xt_a, out_a, t_a, abar, kind)
        x0_hat_v = predict_x0(xt_v, out_v, t_v, abar, kind).unflatten(0, (b, n))[:, pair]
        pixels = vae_decode(vae, torch.cat([x0_hat_a, x0_hat_v.flatten(0, 1)]))  # with gradient
        gan = GanInputs(
            audio=inputs.audio_image,
            frames=inputs.target_frames[:, pair],
            audio_hat=pixels[:b],
            frames_hat=pixels[b:].unflatten(0, (b, 2)),
        )
        _, fakes = gan.triplets(detach=False)
        g = hinge_g_loss(discriminator(fakes[:b]))  # <a^, v^_i, v^_j> should pass as real
        loss = loss + ae.gan_weight * g
        logs["loss_gan_g"] = g.item()
    logs["loss"] = loss.item()
    return loss, logs, gan


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


@torch.no_grad()
def write_reconstructions(
    codec: Codec, video: torch.Tensor, audio: torch.Tensor, folder: Path, num: int = 2
) -> None:
    """Encode and decode a few clips of the batch: mp4s with sound and a PNG grid (rows:
    original frames + audio image, then their reconstructions)."""
    from mmldm.audio.mel import audio_image
    from mmldm.data.media import write_video
    from mmldm.viz import save_grid

    cfg, model = codec.cfg, codec.autoencoder
    was_training = model.training
    model.eval()
    video, audio = video[:num].float(), audio[:num].float()
    z_a, z_v = codec.encode(video, audio)
    out = codec.decode(z_a, z_v, generator=torch.Generator(video.device).manual_seed(0))

    audio_images = audio_image(audio, cfg.data)  # the originals' (no second VAE pass)
    rows, labels = [], []
    for i in range(len(video)):
        write_video(
            folder / f"recon_{i}.mp4",
            out.frames[i].permute(0, 2, 3, 1).cpu().numpy(),
            cfg.data.fps,
            out.wave[i].cpu().numpy(),
            out.sample_rate,
        )
        rows += [[*video[i], audio_images[i]], [*out.frames[i], out.audio_image[i]]]
        labels += [f"clip {i}", f"recon {i}"]
    save_grid(rows, folder / "grid.png", labels)
    model.train(was_training)
    log.info("wrote reconstructions to %s", folder)


def batch_inputs(
    batch: dict, vae, cfg: Config, num_targets: int, cache: VAELatentCache | None = None
) -> VAEInputs:
    """A training batch (``video [B, F, 3, S, S]``, ``audio [B, N]``, their paths and starts) ->
    VAE latents of key frames, ``num_targets`` random frames per clip and the audio image, each
    clip mirrored with probability ``data.hflip_prob``; from the cache's posteriors if given."""
    video = batch["video"]
    flip = torch.rand(len(video), device=video.device) < cfg.data.hflip_prob
    keys = None
    if cache is not None:
        keys = list(zip(batch["path"], batch["start"].tolist(), strict=True))
    return vae_inputs(
        vae, cfg, video, batch["audio"], num_targets, flip=flip, cache=cache, keys=keys
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
    stage = cfg.train.autoencoder
    accelerator = make_accelerator(cfg, stage)
    dataset = training_dataset(data, cfg, cache_dir, accelerator)
    vae = load_vae(cfg.vae).to(accelerator.device).eval().requires_grad_(False)
    cfg = adopt_vae_scaling(cfg, vae)  # stored in every checkpoint: sampling rebuilds the VAE
    model = MultiModalAutoencoder(autoencoder_config(cfg), cfg.train.gradient_checkpointing)
    if cfg.decoder.pretrained_unet and not resume:  # the paper starts from SD 1.x's UNet
        for unet in model.decoder.unets.values():
            load_pretrained_unet(unet, cfg.decoder.pretrained_unet)
    objective = Objective(model, cfg)
    opt = make_optimizer(model.parameters(), stage)
    disc = (
        TripletDiscriminator(discriminator_config(cfg)) if cfg.autoencoder.gan_weight > 0 else None
    )
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
        if loop.due(cfg.train.sample_every):
            if accelerator.is_main_process:
                folder = run / "samples" / f"step_{loop.step:08d}"
                write_reconstructions(previews, video, audio, folder)
            accelerator.wait_for_everyone()
    return loop.close()
