"""Stage 2 training: the multi-modal DiT on cached latents (paper sec. 3.2-3.3, eq. 8).

One timestep is shared by both modalities; loss = MSE(eps_a) + MSE(eps_v) (or of v with
``diffusion.prediction_type = v_prediction``). The conditional tasks are learned by the same
model: per sample, ``dit.a2v_prob`` (the paper: 5%) audio-to-video (clean z_a given),
``dit.v2a_prob`` (5%) video-to-audio (clean z_v given), exclusive; otherwise the conditions are
zeros. With ``dit.long`` the previous clip's latents are given, with the previous video dropped
for 20% of the samples and the previous audio for another 20%, so that one model continues
audio, video, or both.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from mmldm.config import Config
from mmldm.data.latents import LatentCacheError, LatentDataset
from mmldm.diffusion.schedule import add_noise, alphas_cumprod, training_target
from mmldm.generation import MMLDMPipelineOutput, save_generation
from mmldm.models.dit import DiTInputs, MultiModalDiT
from mmldm.networks import dit_config
from mmldm.sampling import sample_latents
from mmldm.train.common import (
    BatchRandom,
    TrainingLoop,
    ema_decay_at,
    ema_update,
    initial_weights,
    make_accelerator,
    make_optimizer,
    train_step,
)

log = logging.getLogger(__name__)


def generator_loss(
    model: nn.Module,
    batch: dict,
    cfg: Config,
    abar: torch.Tensor,
    rng: BatchRandom | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """eq. 8 with the task mixing of sec. 3.3 (and the previous-clip drops of long training).

    Args:
        batch: normalised latents ``z_a [B, C, ...]``, ``z_v``, ``label [B]``, and for long
            training ``prev_a``, ``prev_v``, ``has_prev [B]``.
        rng: the step's draws (default: torch's global RNG on one process).
    """
    d = cfg.dit
    z_a, z_v = batch["z_a"], batch["z_v"]
    b = len(z_a)
    rng = rng or BatchRandom(None, device=z_a.device)
    t = rng.randint(len(abar), b)  # shared by both modalities
    n_a, n_v = rng.randn(*z_a.shape).to(z_a.dtype), rng.randn(*z_v.shape).to(z_v.dtype)
    u = rng.rand(b)
    a2v = (u < d.a2v_prob).to(z_a.dtype)
    v2a = ((u >= d.a2v_prob) & (u < d.a2v_prob + d.v2a_prob)).to(z_a.dtype)
    inputs = DiTInputs(
        z_a=add_noise(z_a, n_a, t, abar),
        z_v=add_noise(z_v, n_v, t, abar),
        t=t,
        cond_a=z_a * a2v.view(-1, 1, 1, 1),
        cond_v=z_v * v2a.view(-1, 1, 1, 1),
    )
    if d.class_conditional:
        null = torch.full_like(batch["label"], cfg.data.num_classes)
        drop = (rng.rand(b) < d.class_drop_prob) | (batch["label"] < 0)
        inputs.labels = torch.where(drop, null, batch["label"])
    if d.long:
        has = batch["has_prev"].to(z_a.dtype)
        w = rng.rand(b)
        keep_v = has * (w >= d.prev_video_drop_prob).to(z_a.dtype)
        keep_a = has * (
            (w < d.prev_video_drop_prob) | (w >= d.prev_video_drop_prob + d.prev_audio_drop_prob)
        ).to(z_a.dtype)
        inputs.prev_a = batch["prev_a"] * keep_a.view(-1, 1, 1, 1)
        inputs.prev_v = batch["prev_v"] * keep_v.view(-1, 1, 1, 1)
    out_a, out_v = model(inputs)
    kind = cfg.diffusion.prediction_type
    target_a = training_target(z_a, n_a, t, abar, kind)
    target_v = training_target(z_v, n_v, t, abar, kind)
    mse_a = F.mse_loss(out_a.float(), target_a.float())
    mse_v = F.mse_loss(out_v.float(), target_v.float())
    loss = mse_a + mse_v
    return loss, {"loss": loss.item(), "loss_audio": mse_a.item(), "loss_video": mse_v.item()}


def check_latents_match(cfg: Config, dataset: LatentDataset) -> None:
    meta = dataset.meta
    if list(cfg.audio_latent_shape) != meta["z_a_shape"] or (
        list(cfg.video_latent_shape) != meta["z_v_shape"]
    ):
        raise LatentCacheError(
            f"{dataset.root}: latents are z_a {meta['z_a_shape']}, z_v {meta['z_v_shape']}; the "
            f"config expects {list(cfg.audio_latent_shape)}, {list(cfg.video_latent_shape)}: "
            "use the autoencoder's config (autoencoder and data sections) for the generator"
        )


def generator_step(
    accelerator: Accelerator,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batch: dict,
    cfg: Config,
    abar: torch.Tensor,
    step: int,
    ema: nn.Module | None = None,
) -> dict[str, float]:
    """One training step of the DiT (eq. 8, :func:`generator_loss`), then the EMA update;
    returns the logs. ``model`` and ``opt`` as ``accelerator`` prepared them."""
    stage = cfg.train.generator
    # the draws of the global batch from (seed, step): the same on any number of processes
    rng = BatchRandom(
        cfg.train.seed, step, accelerator.process_index, accelerator.num_processes, abar.device
    )
    logs, _ = train_step(
        accelerator,
        model,
        opt,
        lambda: generator_loss(model, batch, cfg, abar, rng),
        grad_clip=stage.grad_clip,
        step=step,
    )
    if ema is not None and accelerator.sync_gradients:
        decay = ema_decay_at(step // stage.grad_accum, stage.ema_decay)  # warm-up
        ema_update(ema, accelerator.unwrap_model(model), decay)
    return logs


def train_generator(
    cfg: Config,
    latents: str | Path,
    run: str | Path,
    *,
    resume: bool = False,
    max_steps: int | None = None,
) -> Path:
    """Train the DiT on a latent cache into ``run``; returns the last checkpoint's folder."""
    run = Path(run)
    stage = cfg.train.generator
    accelerator = make_accelerator(cfg, stage, run)
    dataset = LatentDataset(latents)
    check_latents_match(cfg, dataset)
    if cfg.dit.long and not any(p >= 0 for p in dataset.prev):
        raise LatentCacheError(
            f"{latents}: no clip has a cached predecessor; long training needs consecutive "
            "clips (data.clip_stride = data.num_frames and videos longer than one clip)"
        )
    with initial_weights(cfg):
        model = MultiModalDiT(dit_config(cfg), cfg.train.gradient_checkpointing)
    ema = copy.deepcopy(model).requires_grad_(False) if stage.ema_decay > 0 else None
    opt = make_optimizer(model.parameters(), stage)
    model, opt = accelerator.prepare(model, opt)
    if ema is not None:
        ema.to(accelerator.device)
    modules: dict = {"dit": model, "latent_stats": dataset.stats.state_dict()}
    if ema is not None:
        modules["ema"] = ema
    metadata = {
        "mmldm.autoencoder": dataset.meta["autoencoder"],
        "mmldm.autoencoder_fingerprint": dataset.meta["autoencoder_fingerprint"],
    }
    loop = TrainingLoop(
        accelerator,
        cfg,
        "generator",
        run,
        dataset,
        modules,
        {"dit": opt},
        resume=resume,
        max_steps=max_steps,
        extra_metadata=metadata,
    )
    abar = alphas_cumprod(cfg.diffusion).to(accelerator.device)
    samples = TrainingSamples(cfg, dataset)
    # the EMA weights when there are any: the ones sampling loads by default
    shown = ema if ema is not None else accelerator.unwrap_model(model)
    for batch in loop:
        logs = generator_step(accelerator, model, opt, batch, cfg, abar, loop.step, ema)
        loop.end_step(logs)
        loop.preview(lambda folder: samples.write(shown, folder), shown)
    return loop.close()


class TrainingSamples:
    """Sounding videos from the generator while it trains (svg, decoded with the autoencoder
    the latents came from; skipped with a warning when that checkpoint is not there)."""

    def __init__(self, cfg: Config, dataset: LatentDataset, num: int = 2) -> None:
        self.cfg, self.dataset, self.num = cfg, dataset, num
        self.codec = None  # loaded at the first samples; False: not there

    def write(self, dit: MultiModalDiT, folder: Path) -> None:
        from mmldm.codec import Codec

        if self.codec is None:
            path = Path(self.dataset.meta["autoencoder"])
            if not path.exists():
                log.warning("no samples: the autoencoder %s is not there", path)
                self.codec = False
                return
            self.codec = Codec.load(path, device=dit.eos_a.device)
        if not self.codec:
            return
        was_training = dit.training
        dit.eval()
        g = torch.Generator(dit.eos_a.device).manual_seed(0)  # the same samples every time
        z_a, z_v = sample_latents(dit, self.cfg, self.num, generator=g)
        out = self.codec.decode(*self.dataset.stats.denormalize(z_a, z_v), generator=g)
        data = self.cfg.data
        svg = MMLDMPipelineOutput.from_signals(
            out.frames, out.wave, sample_rate=data.sample_rate, fps=data.fps, seeds=[0] * self.num
        )
        save_generation(svg, folder)
        dit.train(was_training)
        log.info("wrote generator samples to %s", folder)
