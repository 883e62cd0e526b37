"""The noise schedule, the two prediction types and the sampling loop, against closed forms."""

import pytest
import torch
from diffusers import DDPMScheduler

from mmldm.config import load_config
from mmldm.diffusion.sampling import sample_loop
from mmldm.diffusion.schedule import (
    add_noise,
    alphas_cumprod,
    make_sampler,
    predict_x0,
    training_target,
)


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
def test_alphas_cumprod_match_diffusers(schedule):
    cfg = load_config("tiny", [f"diffusion.beta_schedule={schedule}"]).diffusion
    ref = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=schedule,
    ).alphas_cumprod
    assert torch.allclose(alphas_cumprod(cfg).float(), ref, rtol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_target_of_the_clean_signal_gives_it_back(kind):
    """predict_x0(x_t, target) == x0 for every t: the target and its inverse agree."""
    abar = alphas_cumprod(load_config("tiny").diffusion)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = add_noise(x0, noise, t, abar)
    target = training_target(x0, noise, t, abar, kind)
    assert torch.allclose(predict_x0(x_t, target, t, abar, kind), x0, atol=1e-4)
    a = abar[t].float().view(-1, 1, 1, 1)
    expected = noise if kind == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(target, expected, atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_eps_and_v_models_sample_the_same_trajectory(sampler):
    """An oracle denoiser of one point x0, asked for eps or for v, leads the sampler to the same
    place, and that place is x0 (up to the noise left at the last step)."""
    cfg = load_config("tiny").diffusion
    abar = alphas_cumprod(cfg)
    x0 = torch.tensor([[1.5, -0.5, 0.25, -2.0]])
    x_T = torch.randn(1, 4, generator=torch.Generator().manual_seed(0))
    results = {}
    for kind in ("epsilon", "v_prediction"):

        def oracle(x_t, t, kind=kind):
            a = abar[t].float().view(-1, 1)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

        scheduler = make_sampler(
            load_config("tiny", [f"diffusion.prediction_type={kind}"]).diffusion, sampler
        )
        results[kind] = sample_loop(oracle, x_T, scheduler, 20)
    assert torch.allclose(results["epsilon"], results["v_prediction"], atol=1e-4)
    assert torch.allclose(results["epsilon"], x0, atol=0.1)
