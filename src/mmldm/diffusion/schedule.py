"""The noise schedule (docs/design.md §1; paper eq. 4-6) and the diffusers schedulers built on it.

Forward process, as DDPM and the published code (not the paper's eq. 6 typo, docs/design.md §8.6):
    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps
The networks predict eps (the paper) or, with ``diffusion.prediction_type = v_prediction``,
    v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x_0      (Salimans & Ho 2022)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

if TYPE_CHECKING:  # the schedule reads a config's fields; it needs no more of mmldm
    from mmldm.config import DiffusionConfig


def _common(cfg: DiffusionConfig) -> dict:
    return {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": cfg.beta_schedule,
        "prediction_type": cfg.prediction_type,
    }


def alphas_cumprod(cfg: DiffusionConfig) -> torch.Tensor:
    """alpha_bar_t for t = 0 .. T-1, float64 ``[T]``."""
    if cfg.beta_schedule == "scaled_linear":  # Stable Diffusion: linear in sqrt(beta)
        betas = (
            torch.linspace(
                cfg.beta_start**0.5, cfg.beta_end**0.5, cfg.num_train_timesteps, dtype=torch.float64
            )
            ** 2
        )
    else:
        betas = torch.linspace(
            cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, dtype=torch.float64
        )
    return torch.cumprod(1.0 - betas, dim=0)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, abar: torch.Tensor
) -> torch.Tensor:
    """q(x_t | x_0): ``x0``, ``noise`` ``[N, ...]``, integer ``t`` ``[N]``, ``abar`` ``[T]``."""
    a = _abar_at(abar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def _abar_at(abar: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return abar.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def training_target(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    abar: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """What the network learns to output for ``x_t = add_noise(x0, noise, t)``: eps, or v."""
    if prediction_type == "epsilon":
        return noise
    a = _abar_at(abar, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predict_x0(
    x_t: torch.Tensor,
    output: torch.Tensor,
    t: torch.Tensor,
    abar: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """The one-step estimate of x_0 from the network's output (inverts :func:`add_noise`):
    eps: (x_t - sqrt(1 - abar) eps) / sqrt(abar); v: sqrt(abar) x_t - sqrt(1 - abar) v."""
    a = _abar_at(abar, t, x_t)
    if prediction_type == "epsilon":
        return (x_t - (1 - a).sqrt() * output) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * output


def make_sampler(cfg: DiffusionConfig, kind: str = "ddim"):
    """A diffusers scheduler for sampling: "ddim" (the paper's) or "dpm" (DPM-Solver++ 2M)."""
    if kind == "ddim":
        # no final alpha snap to 1 and no clipping: latents are unbounded
        return DDIMScheduler(
            **_common(cfg),
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
        )
    if kind == "dpm":
        return DPMSolverMultistepScheduler(
            **_common(cfg), algorithm_type="dpmsolver++", solver_order=2
        )
    if kind == "ddpm":
        return DDPMScheduler(**_common(cfg), clip_sample=False)
    raise ValueError(f"unknown sampler {kind!r} (ddim | dpm | ddpm)")
