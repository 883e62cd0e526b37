"""The noise schedule (DESIGN.md 1; paper eq. 4-6) and the diffusers schedulers built on it.

Forward process, as DDPM and the published code (not the paper's eq. 6 typo, DESIGN.md 8.6):
    x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

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
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(
    x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, abar: torch.Tensor
) -> torch.Tensor:
    """The one-step estimate of x_0 from an eps prediction (inverts :func:`add_noise`)."""
    a = abar.to(x_t.device)[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


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
