"""Sampling loops: plain functions with the loop in sight (k-diffusion / flux style).

``eps_fn(x_t, t) -> eps`` is the model (guidance included by the caller); the scheduler is a
diffusers scheduler from :func:`mmldm.diffusion.schedule.make_sampler`, so DDIM and DPM-Solver
share this loop. With ``diffusion.prediction_type = v_prediction`` the model returns v instead of
eps; the scheduler is built with the same type, and guidance, being linear, applies unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmldm.console import progress

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(eps_cond: torch.Tensor, eps_null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, the paper's eq. 9 read as in DESIGN.md 8.6:
    eps = phi * eps(cond) - (phi - 1) * eps(null); phi = 1 is the plain conditional model."""
    return eps_null + scale * (eps_cond - eps_null)


@torch.no_grad()
def sample_loop(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    scheduler,
    steps: int,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Run ``steps`` denoising steps from pure noise ``x_T`` and return x_0.

    Args:
        eps_fn: ``(x_t [N, ...], t [N] long) -> eps [N, ...]``.
        eta: DDIM stochasticity (0: deterministic, the paper's setting); ignored by DPM-Solver.
    """
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    kwargs = {"eta": eta, "generator": generator} if "eta" in _step_params(scheduler) else {}
    timesteps = scheduler.timesteps
    if desc:
        timesteps = progress(timesteps, desc=desc, leave=False)
    for t in timesteps:
        t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
        eps = eps_fn(scheduler.scale_model_input(x, t), t_batch)
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
