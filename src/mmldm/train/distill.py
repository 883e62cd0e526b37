"""A few-step signal decoder trained from stage 1's (``mmldm distill-decoder``; beyond the
paper, docs/fast_decoding.md).

The paper's decoder takes 50 DDIM steps with classifier-free guidance, i.e. 2 x 50 UNet passes
per frame and audio image: most of a sounding video's cost. The student is a copy of the
trained decoder (condition branches and UNet) trained through its own K-step sampler
(:func:`mmldm.diffusion.sampling.few_step_sample`, K passes, no guidance), starting from the
same pure noise as at sampling time. Its final x_0 is regressed on

- ``distill.target = data``: the VAE latents of the clip's own frames and audio image (a
  few-step decoder trained with the regression loss stage 1 already has);
- ``distill.target = teacher`` (default): the guided teacher's DDIM sample from the same noise
  (knowledge distillation of the sampler, Luhman & Luhman 2021); ``teacher_steps`` teacher
  steps per training step make it slower.

``mmldm distill-vae`` (part "vae") trains, the same way, a :class:`TinyVAEDecoder` (TAESD's
architecture, 1.2M parameters at the paper's size) to reproduce the KL-VAE decoder's images of
the same latents (L1 + MSE): the second-largest cost of a video once the signal decoder is few-
step.

The encoders stay frozen, so the latents the generator was trained on do not change: a
distilled decoder is a checkpoint of its own (kind "distill", module "decoder" or "vae_decoder")
that names the autoencoder it belongs to, and sampling loads it beside that autoencoder.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from mmldm.checkpoint import checkpoint_fingerprint, read_metadata, resolve_checkpoint
from mmldm.codec import (
    Codec,
    VAEInputs,
    VAELatentCache,
    batch_inputs,
    decoder_denoiser,
    decoder_noise,
    run_decoder_sampler,
    tiny_vae_decoder_config,
)
from mmldm.config import Config, ConfigError, load_config, override_config, override_settings
from mmldm.diffusion.sampling import few_step_sample, few_step_timesteps
from mmldm.diffusion.schedule import alphas_cumprod
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.signal_decoder import SignalDecoder
from mmldm.models.vae import TinyVAEDecoder
from mmldm.models.vae import decode as vae_decode
from mmldm.models.vae import encode as vae_encode
from mmldm.train.common import (
    TrainingLoop,
    initial_weights,
    make_optimizer,
    start_clip_stage,
    train_step,
    write_reconstructions,
)
from mmldm.weights import CheckpointError

log = logging.getLogger(__name__)

# what a distillation run may change of its autoencoder's config: the architecture is the
# autoencoder's, so that the student is a copy of its decoder
DISTILL_KEYS = ("distill.", "train.", "sample.")


PARTS = {"signal": "decoder", "vae": "vae_decoder"}  # part -> its module in the checkpoint


def distill_config(teacher: Config, overrides: list[str], part: str = "signal") -> Config:
    """The run's config: the autoencoder's, the overrides (``distill.*``, ``train.*``,
    ``sample.*`` only), and for the signal decoder the student's sampling settings (few_step,
    K steps, no guidance)."""
    cfg = override_settings(teacher, overrides, DISTILL_KEYS, "the autoencoder's config")
    if part == "vae":
        return cfg
    student = [
        "sample.decoder_sampler=few_step",
        f"sample.decoder_steps={cfg.distill.steps}",
        "sample.decoder_guidance_audio=1.0",
        "sample.decoder_guidance_video=1.0",
    ]
    return override_config(cfg, student, "the distillation config")


def distill_loss(
    student: SignalDecoder,
    teacher: MultiModalAutoencoder,
    inputs: VAEInputs,
    cfg: Config,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Regression of the student's K-step x_0 on the target (data or the guided teacher's).

    Args:
        inputs: ``distill.target_frames`` frames per clip (+ the audio image), from
            :func:`mmldm.codec.vae_inputs`.
    Returns:
        (loss, logged terms): MSE in VAE latent space, audio and video apart.
    """
    dc, kind = cfg.distill, cfg.diffusion.prediction_type
    b = len(inputs.audio_latent)
    n = inputs.target_index.shape[1]
    with torch.no_grad():  # the frozen encoders: z drawn from the posteriors, as in stage 1
        enc = teacher.encode(inputs.key_latents, inputs.audio_latent)
        s_a, s_v = teacher.semantics(enc.z_a, enc.z_v)
        labels = teacher.predict_class(s_a, s_v)  # the class decoding is given: the prediction
    given = (cfg, enc.z_a, enc.z_v, s_a, s_v, labels, inputs.target_index)
    device, dtype = enc.z_a.device, enc.z_a.dtype
    x_T = decoder_noise(cfg, b, n, device=device, dtype=dtype)  # [B + B*n, 4, R, R]
    times = few_step_timesteps(dc.steps, cfg.diffusion.num_train_timesteps)
    abar = alphas_cumprod(cfg.diffusion)
    x0 = few_step_sample(decoder_denoiser(student, *given), x_T, times, abar, kind)
    if dc.target == "data":
        target = torch.cat([inputs.audio_latent, inputs.target_latents.flatten(0, 1)])
    else:
        with torch.no_grad():
            g = dc.teacher_guidance
            teacher_fn = decoder_denoiser(teacher.decoder, *given, g, g)
            target = run_decoder_sampler(teacher_fn, x_T, cfg, "ddim", dc.teacher_steps)
    mse_a = F.mse_loss(x0[:b].float(), target[:b].float())
    mse_v = F.mse_loss(x0[b:].float(), target[b:].float())
    loss = mse_a + mse_v
    logs = {"loss": loss.item(), "loss_mse_audio": mse_a.item(), "loss_mse_video": mse_v.item()}
    return loss, logs


def distill_vae_loss(
    tiny: TinyVAEDecoder, vae, inputs: VAEInputs
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE between the tiny decoder's images and the KL-VAE decoder's of the same
    latents (the audio images and ``distill.target_frames`` frames per clip)."""
    latents = torch.cat([inputs.audio_latent, inputs.target_latents.flatten(0, 1)])
    with torch.no_grad():
        target = vae_decode(vae, latents).float()  # [B + B*n, 3, S, S]
    out = tiny(latents).float()
    l1, mse = F.l1_loss(out, target), F.mse_loss(out, target)
    loss = l1 + mse
    return loss, {"loss": loss.item(), "loss_l1": l1.item(), "loss_mse": mse.item()}


class Objective(nn.Module):
    """The loss as the forward of one module (DDP sees one forward per backward); the frozen
    teacher is held outside its parameters, inside ``loss``."""

    def __init__(self, student: nn.Module, loss: Callable) -> None:
        super().__init__()
        self.student = student
        self.aux = {"loss": loss}  # (student, inputs) -> (loss, logs)

    def forward(self, inputs: VAEInputs) -> tuple[torch.Tensor, dict[str, float]]:
        return self.aux["loss"](self.student, inputs)


@torch.no_grad()
def _write_previews(part, codec: Codec, student, cfg: Config, batch, folder: Path) -> None:
    """Reconstructions of a few clips of the batch decoded by the student: mp4s + a grid (the
    signal decoder), or a grid of KL-VAE vs tiny decoder images of their latents (the VAE).
    ``codec``: the teacher's (its vocoder is loaded once, at the first preview)."""
    teacher, vae = codec.autoencoder, codec.vae
    if part == "signal":
        own_decoder = teacher.decoder
        teacher.decoder = student  # the teacher's encoders, the student's decoder and settings
        try:
            previews = Codec(cfg, teacher, vae, vocoder=codec.get_vocoder())
            write_reconstructions(previews, batch["video"], batch["audio"], folder)
        finally:
            teacher.decoder = own_decoder
            student.train()
        return
    from mmldm.viz import save_grid

    frames = batch["video"][:2].float()  # [2, F, 3, S, S]
    latents = vae_encode(vae, frames.flatten(0, 1), sample=False)
    kl = vae_decode(vae, latents).clamp(-1, 1).unflatten(0, frames.shape[:2])
    tiny = student(latents).clamp(-1, 1).unflatten(0, frames.shape[:2])
    rows = [row for i in range(len(frames)) for row in (frames[i], kl[i], tiny[i])]
    labels = [f"{what} {i}" for i in range(len(frames)) for what in ("clip", "KL-VAE", "tiny")]
    folder.mkdir(parents=True, exist_ok=True)
    save_grid(rows, folder / "grid.png", labels)


def distill_decoder(
    autoencoder: str | Path,
    data: str | Path,
    run: str | Path,
    *,
    part: str = "signal",
    overrides: list[str] | None = None,
    resume: bool = False,
    cache_dir: str | Path | None = None,
    max_steps: int | None = None,
) -> Path:
    """Train a few-step signal decoder (``part="signal"``) or a tiny VAE decoder
    (``part="vae"``) for ``autoencoder`` into the run folder ``run``; returns the last
    checkpoint's folder. A resumed run keeps its stored config and must be given the same
    autoencoder."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r} ({' | '.join(PARTS)})")
    run = Path(run)
    codec, cfg, fingerprint = _load_teacher(autoencoder, run, part, overrides, resume)
    accelerator, dataset = start_clip_stage(cfg, "distill", data, cache_dir, run, resume)
    # the teacher and its VAE on the device first: the student is a copy of the teacher's decoder
    codec.autoencoder.to(accelerator.device)
    codec.vae.to(accelerator.device)
    student, objective = _build_student(part, codec, cfg, accelerator.device)
    opt = make_optimizer(student.parameters(), cfg.train.distill)
    objective, opt = accelerator.prepare(objective, opt)
    loop = TrainingLoop(
        accelerator,
        cfg,
        "distill",
        run,
        dataset,
        {PARTS[part]: student},
        {PARTS[part]: opt},
        resume=resume,
        max_steps=max_steps,
        num_workers=cfg.data.num_workers,
        extra_metadata={
            "mmldm.autoencoder": str(autoencoder),
            "mmldm.autoencoder_fingerprint": fingerprint,
        },
    )
    if accelerator.is_main_process:
        _write_sources(run, autoencoder, data, cache_dir)
    write_previews = functools.partial(_write_previews, part, codec, student, cfg)
    return _train_student(accelerator, loop, objective, opt, codec.vae, cfg, write_previews)


def _load_teacher(
    autoencoder: str | Path,
    run: Path,
    part: str,
    overrides: list[str] | None,
    resume: bool,
) -> tuple[Codec, Config, str]:
    """The trained autoencoder's codec (on the CPU), the run's config and the autoencoder's
    fingerprint (:func:`mmldm.checkpoint.checkpoint_fingerprint`, a hex string).

    A new run's config is the autoencoder's with ``overrides`` (:func:`distill_config`); a
    resumed run keeps its stored one, takes no overrides (ValueError) and must distil the
    autoencoder its checkpoints name (CheckpointError otherwise).
    """
    fingerprint = checkpoint_fingerprint(autoencoder)
    # read once, on the CPU until the device is known; its config is the run's base
    codec = Codec.load(autoencoder, folder_decoders=False)  # the teacher: the full decoder
    if not resume:
        return codec, distill_config(codec.cfg, list(overrides or []), part), fingerprint
    if overrides:
        raise ConfigError("--resume continues a run with its own config: drop --set")
    cfg = load_config(run / "config.yaml")
    meta = read_metadata(resolve_checkpoint(run))  # the header only, not the weights
    saved = meta.get("mmldm.autoencoder_fingerprint")
    if saved != fingerprint:
        raise CheckpointError(
            f"{run} distils the decoder of another autoencoder ({saved}), not {autoencoder} "
            f"({fingerprint})"
        )
    return codec, cfg, fingerprint


def _build_student(
    part: str, codec: Codec, cfg: Config, device: torch.device
) -> tuple[nn.Module, Objective]:
    """The student and its objective: a trainable copy of the teacher's signal decoder
    (``part="signal"``, :func:`distill_loss`) or a new :class:`TinyVAEDecoder` on ``device``
    (``part="vae"``, :func:`distill_vae_loss`)."""
    teacher, vae = codec.autoencoder, codec.vae
    if part == "signal":
        student = copy.deepcopy(teacher.decoder).train().requires_grad_(True)
        if cfg.train.gradient_checkpointing:  # K passes are kept for the backward through them
            for unet in student.unets.values():
                unet.enable_gradient_checkpointing()
        return student, Objective(student, lambda s, x: distill_loss(s, teacher, x, cfg))
    with initial_weights(cfg):  # the same on every process
        student = TinyVAEDecoder(**tiny_vae_decoder_config(cfg)).to(device)
    return student, Objective(student, lambda s, x: distill_vae_loss(s, vae, x))


def _write_sources(
    run: Path, autoencoder: str | Path, data: str | Path, cache_dir: str | Path | None
) -> None:
    """``run/data.json``: the autoencoder, data and latent cache (or null) the run reads."""
    (run / "data.json").write_text(
        json.dumps(
            {
                "autoencoder": str(autoencoder),
                "data": str(data),
                "cache": None if cache_dir is None else str(cache_dir),
            }
        )
    )


def _train_student(
    accelerator: Accelerator,
    loop: TrainingLoop,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    vae: nn.Module,
    cfg: Config,
    write_previews: Callable[[dict, Path], None],
) -> Path:
    """The training loop: each step's ``distill.target_frames`` frames per clip through
    ``vae`` (or its latent cache) and one :func:`train_step` of ``objective``; previews every
    ``train.sample_every`` steps (``write_previews(batch, folder)``, main process). Returns the
    last checkpoint's folder."""
    cache = VAELatentCache(vae) if cfg.train.cache_vae_latents else None
    for batch in loop:
        inputs = batch_inputs(batch, vae, cfg, cfg.distill.target_frames, cache)
        logs, _ = train_step(
            accelerator,
            objective,
            opt,
            lambda inputs=inputs: objective(inputs),
            grad_clip=cfg.train.distill.grad_clip,
            step=loop.step,
        )
        loop.end_step(logs)
        loop.preview(functools.partial(write_previews, batch), objective)
    return loop.close()
