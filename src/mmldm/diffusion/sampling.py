"""Sampling loops: plain functions with the loop in sight (k-diffusion / flux style).

``model_fn(x_t, t) -> prediction`` is the model (guidance included by the caller): eps, or v
with ``diffusion.prediction_type = v_prediction``; every name here holds for both. The scheduler
is a diffusers scheduler from :func:`mmldm.diffusion.schedule.make_sampler`, built with the same
prediction type, so DDIM and DPM-Solver share this loop; guidance, being linear, applies to
either unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmldm.console import progress
from mmldm.diffusion.schedule import predict_x0

# (x_t [N, ...], t [N] long) -> the model's prediction (eps or v) [N, ...]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# random draws: none given, one generator for a batch, or one per row (diffusers' convention)
Generators = torch.Generator | list[torch.Generator] | None
# (step index, timestep, x after the step) -> None, or a tensor that replaces x
StepCallback = Callable[[int, int, torch.Tensor], torch.Tensor | None]


def guided(cond: torch.Tensor, null: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance, the paper's eq. 9 read as in docs/design.md §8.6:
    out = phi * out(cond) - (phi - 1) * out(null); phi = 1 is the plain conditional model."""
    return null + scale * (cond - null)


def guide(
    predict: Callable[[Any], Sequence[torch.Tensor]],
    cond: Any,
    null: Any,
    scales: Sequence[float],
) -> tuple[torch.Tensor, ...]:
    """One model call with classifier-free guidance per modality (eq. 9).

    Args:
        predict: ``inputs -> (prediction per modality)``, each ``[rows, ...]``.
        cond, null: the model's inputs with and without the condition (tensors, lists, tuples or
            dataclasses of them, or None), rows in the same order.
        scales: one guidance scale per modality; when all are 1, only ``cond`` runs.

    The conditional and null rows run as one batch (one pass per step, not two); each
    modality's output is then ``guided(cond half, null half, scale)``.
    """
    if all(scale == 1.0 for scale in scales):
        return tuple(predict(cond))
    both = predict(cat_rows(cond, null))
    return tuple(guided(*out.chunk(2), s) for out, s in zip(both, scales, strict=True))


def cat_rows(a: Any, b: Any) -> Any:
    """Two model inputs of one structure (tensors ``[N, ...]``, lists / tuples / dataclasses of
    them, None) -> one input with the rows of ``a`` followed by those of ``b``."""
    if a is None or b is None:
        if a is not b:
            raise ValueError("cat_rows: one input has a field that the other lacks")
        return None
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, list | tuple):
        return type(a)(cat_rows(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a):
        fields = {
            f.name: cat_rows(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        }
        return dataclasses.replace(a, **fields)
    raise TypeError(f"cat_rows: cannot stack {type(a).__name__}")


@torch.no_grad()
def sample_loop(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    scheduler,
    steps: int,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    desc: str | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run ``steps`` denoising steps from pure noise ``x_T`` and return x_0 (``generator``: for
    DDIM's noise with eta > 0; a list holds one generator per row of ``x_T``).

    Args:
        model_fn: ``(x_t [N, ...], t [N] long) -> prediction [N, ...]`` (eps or v).
        eta: DDIM stochasticity (0: deterministic, the paper's setting); ignored by DPM-Solver.
        callback: ``(step index, timestep, x_{t-1}) -> None or a replacement x_{t-1}``, after
            every step.
    """
    scheduler.set_timesteps(steps, device=x_T.device)
    x = x_T * scheduler.init_noise_sigma
    kwargs = {"eta": eta, "generator": generator} if "eta" in _step_params(scheduler) else {}
    timesteps = scheduler.timesteps
    if desc:
        timesteps = progress(timesteps, desc=desc, leave=False)
    for i, t in enumerate(timesteps):
        t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
        out = model_fn(scheduler.scale_model_input(x, t), t_batch)
        x = scheduler.step(out, t, x, **kwargs).prev_sample
        if callback is not None:
            replaced = callback(i, int(t), x)
            x = x if replaced is None else replaced
    return x


def few_step_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """K timesteps with trailing spacing, the first at T - 1 (Lin et al. 2024, "Common diffusion
    noise schedules and sample steps are flawed", table 2): T = 1000, K = 4 -> [999, 749, 499,
    249]; K = 1 -> [999]. The leading spacing of the paper's DDIM would start a 1-step sampler at
    t = 1 and never see the noise it starts from."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"few-step sampling needs 1 <= steps <= {num_train_timesteps}, not {steps}"
        )
    return [round(num_train_timesteps * (1 - k / steps)) - 1 for k in range(steps)]


def few_step_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    timesteps: list[int],
    abar: torch.Tensor,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """The few-step decoder's sampler; returns its last x_0 estimate. Differentiable: the
    distillation (:mod:`mmldm.train.distill`) trains the model through this very loop.

    At each timestep t_k the model's output (eps or v) gives x_0^ (eq. 4 inverted), then a
    deterministic DDIM move (eta = 0) takes x to t_{k+1} along the eps that x_0^ implies:
        eps^ = (x - sqrt(abar_k) x_0^) / sqrt(1 - abar_k)
        x   <- sqrt(abar_{k+1}) x_0^ + sqrt(1 - abar_{k+1}) eps^
    With an exact model of a single data point, x_0^ is that point at every step (tested).

    Args:
        model_fn: ``(x_t [N, ...], t [N] long) -> eps or v [N, ...]``.
        x_T: ``[N, ...]`` standard normal noise.
        timesteps: decreasing, from :func:`few_step_timesteps`.
        abar: ``[T]`` alpha_bar of the training schedule.
    """
    if not timesteps:
        raise ValueError("few_step_sample needs at least one timestep")
    x = x_T
    abar = abar.to(x.device)
    for t, t_next in zip(timesteps, [*timesteps[1:], None], strict=True):
        t_batch = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        x0 = predict_x0(x, model_fn(x, t_batch), t_batch, abar, prediction_type)
        if t_next is not None:  # deterministic DDIM move to the next timestep
            a, a_next = abar[t].to(x.dtype), abar[t_next].to(x.dtype)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x0


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
