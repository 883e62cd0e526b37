"""The few-step sampler of distilled decoders against closed forms and diffusers' DDIM."""

import pytest
import torch
from diffusers import DDIMScheduler

from mmldm.config import DiffusionConfig
from mmldm.diffusion.sampling import few_step_sample, few_step_timesteps
from mmldm.diffusion.schedule import alphas_cumprod


def test_trailing_timesteps():
    assert few_step_timesteps(1, 1000) == [999]
    assert few_step_timesteps(2, 1000) == [999, 499]
    assert few_step_timesteps(4, 1000) == [999, 749, 499, 249]
    assert few_step_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        few_step_timesteps(0, 1000)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 2, 4, 7])
def test_exact_model_of_one_point_returns_it(prediction_type, steps):
    """Data = one point c: the exact model's x_0 estimate is c from any x_t, so every number
    of steps returns c (to float rounding), whatever the starting noise."""
    cfg = DiffusionConfig(prediction_type=prediction_type)
    abar = alphas_cumprod(cfg)
    c = torch.randn(3, 4, 5, 5, dtype=torch.float64)

    def exact(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * c) / (1 - a).sqrt()
        return eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * c

    x_T = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    times = few_step_timesteps(steps, cfg.num_train_timesteps)
    x0 = few_step_sample(exact, x_T, times, abar, prediction_type)
    torch.testing.assert_close(x0, c, rtol=0, atol=1e-9)


def test_matches_diffusers_ddim_with_trailing_spacing():
    """Any model: the same trajectory as diffusers' DDIM (eta 0, trailing spacing, final
    alpha 1, which returns the last x_0 estimate)."""
    cfg = DiffusionConfig()
    abar = alphas_cumprod(cfg)
    weight = torch.randn(4, 4, dtype=torch.float64) * 0.3

    def model(x, t):  # some smooth function of x and t
        return torch.einsum("ij,bjhw->bihw", weight, x) * (1 + t.view(-1, 1, 1, 1) / 1000)

    x_T = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    scheduler = DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    scheduler.alphas_cumprod = abar.clone()  # float64 like ours, not diffusers' float32
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == few_step_timesteps(4, cfg.num_train_timesteps)
    x = x_T
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(len(x))), t, x).prev_sample
    ours = few_step_sample(model, x_T, few_step_timesteps(4, cfg.num_train_timesteps), abar)
    torch.testing.assert_close(ours, x, rtol=1e-9, atol=1e-9)


def test_gradients_reach_every_step():
    """The distillation trains through the sampler: a parameter used at every step gets a
    gradient from the loss on the final x_0."""
    abar = alphas_cumprod(DiffusionConfig())
    scale = torch.tensor(0.5, requires_grad=True)
    x0 = few_step_sample(lambda x, t: scale * x, torch.randn(2, 3), [999, 499], abar)
    x0.square().mean().backward()
    assert scale.grad is not None and scale.grad != 0
