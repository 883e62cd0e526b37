"""The multi-modal DiT: sizes of the paper, zero-initialised conditions, a falling loss."""

import dataclasses

import pytest
import torch

from mmldm.config import load_config
from mmldm.diffusion.schedule import alphas_cumprod
from mmldm.models.dit import DiTInputs, MultiModalDiT, sincos_2d
from mmldm.networks import dit_config
from mmldm.train.generator import generator_loss


@pytest.mark.parametrize(("size", "millions"), [("S", 131), ("B", 384), ("L", 1543)])
def test_named_sizes_match_table_4(size, millions):
    cfg = load_config("paper_landscape", [f"dit.size={size}"])
    with torch.device("meta"):
        count = sum(p.numel() for p in MultiModalDiT(dit_config(cfg)).parameters())
    assert abs(count / 1e6 - millions) / millions < 0.05


def test_xl_is_the_published_size():
    cfg = load_config("paper_landscape", ["dit.size=XL"])
    assert (cfg.dit.hidden_size, cfg.dit.depth, cfg.dit.num_heads) == (1152, 28, 16)


def test_sequence_layout_and_outputs():
    cfg = load_config("tiny", ["dit.num_context_tokens=3"])
    model = MultiModalDiT(dit_config(cfg))
    z_a, z_v = torch.randn(2, *cfg.audio_latent_shape), torch.randn(2, *cfg.video_latent_shape)
    assert model.audio.num_tokens == 16 and model.video.num_tokens == 64  # 4x4, 8x8 (tiny)
    eps_a, eps_v = model(DiTInputs(z_a, z_v, torch.tensor([3, 900])))
    assert eps_a.shape == z_a.shape and eps_v.shape == z_v.shape
    assert torch.equal(eps_a, torch.zeros_like(eps_a))  # zero-initialised final layers
    pos = sincos_2d(32, 4, 4)
    assert pos.shape == (16, 32) and torch.allclose(pos[0, :8], torch.zeros(8))  # sin(0) = 0


def _trained_a_bit(cfg, steps=3):
    torch.manual_seed(0)
    model = MultiModalDiT(dit_config(cfg))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    abar = alphas_cumprod(cfg.diffusion)
    g = torch.Generator().manual_seed(0)
    batch = {
        "z_a": torch.randn(8, *cfg.audio_latent_shape, generator=g),
        "z_v": torch.randn(8, *cfg.video_latent_shape, generator=g),
        "label": torch.arange(8) % 3,
    }
    batch.update(
        prev_a=batch["z_a"].roll(1, 0),
        prev_v=batch["z_v"].roll(1, 0),
        has_prev=torch.ones(8, dtype=torch.bool),
    )
    for _ in range(steps):
        loss, _ = generator_loss(model, batch, cfg, abar)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_condition_is_used_and_zero_condition_is_unconditional():
    cfg = load_config("tiny", ["dit.a2v_prob=0.5", "dit.v2a_prob=0.5"])
    model = _trained_a_bit(cfg).eval()
    assert model.audio.cond.weight.abs().sum() > 0  # trained away from its zero start
    g = torch.Generator().manual_seed(1)
    z_a, z_v = (
        torch.randn(2, *cfg.audio_latent_shape, generator=g),
        torch.randn(2, *cfg.video_latent_shape, generator=g),
    )
    t = torch.tensor([400, 400])
    given, other = torch.randn_like(z_a, generator=g), torch.randn_like(z_a, generator=g)
    with torch.no_grad():
        _, v1 = model(DiTInputs(z_a, z_v, t, cond_a=given))
        _, v2 = model(DiTInputs(z_a, z_v, t, cond_a=other))
        _, v0 = model(DiTInputs(z_a, z_v, t, cond_a=torch.zeros_like(given)))
        _, vu = model(DiTInputs(z_a, z_v, t))
    assert (v1 - v2).abs().max() > 1e-4  # a2v: the prediction follows the given audio
    assert torch.equal(v0, vu)  # zeros are exactly the unconditional model


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_falls_on_a_fixed_batch(prediction_type):
    cfg = load_config(
        "tiny",
        [
            "dit.long=true",
            "dit.class_conditional=true",
            f"diffusion.prediction_type={prediction_type}",
        ],
    )
    torch.manual_seed(0)
    model = MultiModalDiT(dit_config(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    abar = alphas_cumprod(cfg.diffusion)
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(4, *cfg.audio_latent_shape, generator=g) * 0.1 + 1.0
    z_v = torch.randn(4, *cfg.video_latent_shape, generator=g) * 0.1 - 1.0
    batch = {
        "z_a": z_a,
        "z_v": z_v,
        "label": torch.tensor([0, 1, 2, 0]),
        "prev_a": z_a.roll(1, 0),
        "prev_v": z_v.roll(1, 0),
        "has_prev": torch.tensor([True, True, False, True]),
    }
    losses = fit_fixed_batch(model, opt, batch, cfg, abar, steps=60)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), (losses[:5], losses[-5:])


def test_long_branch_reads_the_previous_clip():
    cfg = load_config("tiny", ["dit.long=true"])
    model = _trained_a_bit(dataclasses.replace(cfg))
    for layer in model.branch_out:  # as after training: the branch reaches the main DiT
        torch.nn.init.normal_(layer.weight, std=0.1)
    z_a, z_v = torch.randn(1, *cfg.audio_latent_shape), torch.randn(1, *cfg.video_latent_shape)
    t = torch.tensor([500])
    with torch.no_grad():
        a1, v1 = model(
            DiTInputs(z_a, z_v, t, prev_a=torch.ones_like(z_a), prev_v=torch.ones_like(z_v))
        )
        a2, v2 = model(
            DiTInputs(z_a, z_v, t, prev_a=-torch.ones_like(z_a), prev_v=-torch.ones_like(z_v))
        )
    assert (v1 - v2).abs().max() > 1e-4 and (a1 - a2).abs().max() > 1e-4


FRAMES = ["autoencoder.latent_channels=6", "autoencoder.frame_channels=1", "dit.frame_tokens=true"]


def test_frame_tokens_layout_round_trip_and_loss():
    """dit.frame_tokens: z_v's clip channels give spatial tokens, each key frame's group one
    token with a time position; the tokens map back to the same latent; the loss falls."""
    with pytest.raises(Exception, match="frame_channels"):
        load_config("tiny", ["dit.frame_tokens=true"])
    cfg = load_config("tiny", [*FRAMES, "dit.long=true"])  # 2 clip channels + 4 frames x 1
    model = MultiModalDiT(dit_config(cfg))
    video = model.video
    assert video.channels == 2 and video.num_frames == 4
    assert video.num_tokens == 64 + 4  # 8x8 spatial tokens + one per key frame
    z_v = torch.randn(2, *cfg.video_latent_shape)
    patches, frames = video.patchify(z_v), video.frames(z_v)
    assert patches.shape == (2, 64, 2) and frames.shape == (2, 4, 64)
    assert torch.equal(frames[:, 1], z_v[:, 3].flatten(1))  # key frame 1's channel
    assert torch.equal(video.unpatchify(patches, frames), z_v)
    tokens = video(z_v)
    assert tokens.shape == (2, 68, cfg.dit.hidden_size)
    # the time positions tell the frame tokens apart, and a frame token sees only its frame
    assert not torch.allclose(tokens[:, 64], tokens[:, 65])
    moved = z_v.clone()
    moved[:, 4] += 1.0  # key frame 2's channel
    changed = (video(moved) - tokens).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False] * 66 + [True, False]
    z_a = torch.randn(2, *cfg.audio_latent_shape)
    out_a, out_v = model(DiTInputs(z_a, z_v, torch.tensor([3, 900])))
    assert out_a.shape == z_a.shape and out_v.shape == z_v.shape
    assert torch.equal(out_v, torch.zeros_like(out_v))  # zero-initialised final layers

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    abar = alphas_cumprod(cfg.diffusion)
    batch = {
        "z_a": torch.randn(4, *cfg.audio_latent_shape) * 0.1 + 1.0,
        "z_v": torch.randn(4, *cfg.video_latent_shape) * 0.1 - 1.0,
        "label": torch.tensor([0, 1, 2, 0]),
    }
    batch.update(prev_a=batch["z_a"], prev_v=batch["z_v"], has_prev=torch.ones(4, dtype=bool))
    losses = fit_fixed_batch(model, opt, batch, cfg, abar, steps=40)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def fit_fixed_batch(model, opt, batch, cfg, abar, steps: int) -> list[float]:
    """``steps`` optimiser steps of the generator loss on one batch, with the noise and
    timesteps drawn from 5 fixed seeds in turn; returns the losses."""
    losses = []
    for step in range(steps):
        torch.manual_seed(step % 5)
        loss, logs = generator_loss(model, batch, cfg, abar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
    return losses


def test_positions_in_dits_layout():
    """Closed form: token (row r, column c) of a row-major grid; the first half of the channels
    holds [sin | cos](c * omega_k), the second half [sin | cos](r * omega_k)."""
    dim, h, w = 16, 3, 5
    pos = sincos_2d(dim, h, w)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim / 4))
    for r in range(h):
        for c in range(w):
            expected = torch.cat(
                [(c * omega).sin(), (c * omega).cos(), (r * omega).sin(), (r * omega).cos()]
            )
            torch.testing.assert_close(pos[r * w + c], expected)


@pytest.mark.parametrize(
    "overrides",
    [
        ["dit.long=true"],
        ["autoencoder.latent_channels=6", "autoencoder.frame_channels=1", "dit.frame_tokens=true"],
    ],
)
def test_model_built_on_the_meta_device_runs_like_one_built_on_the_cpu(overrides):
    cfg = load_config("tiny", overrides)
    torch.manual_seed(0)
    reference = MultiModalDiT(dit_config(cfg))
    for p in reference.parameters():  # non-zero everywhere, so the outputs depend on inputs
        torch.nn.init.normal_(p, std=0.05)
    with torch.device("meta"):
        model = MultiModalDiT(dit_config(cfg))
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    z_a, z_v = torch.randn(2, *cfg.audio_latent_shape), torch.randn(2, *cfg.video_latent_shape)
    inputs = DiTInputs(z_a, z_v, torch.tensor([3, 900]), prev_a=z_a, prev_v=z_v)
    for got, want in zip(model(inputs), reference(inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """train.gradient_checkpointing recomputes the blocks (main and long branch) in the
    backward: the same loss and gradients as keeping their activations."""
    cfg = load_config("tiny", ["dit.long=true"])
    abar = alphas_cumprod(cfg.diffusion)
    torch.manual_seed(0)
    plain = MultiModalDiT(dit_config(cfg))
    for p in plain.parameters():  # adaLN-Zero starts at zero: make every block matter
        torch.nn.init.normal_(p, std=0.05)
    ckpt = MultiModalDiT(dit_config(cfg), gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    batch = {
        "z_a": torch.randn(2, *cfg.audio_latent_shape),
        "z_v": torch.randn(2, *cfg.video_latent_shape),
        "label": torch.tensor([0, 1]),
        "prev_a": torch.randn(2, *cfg.audio_latent_shape),
        "prev_v": torch.randn(2, *cfg.video_latent_shape),
        "has_prev": torch.tensor([True, True]),
    }
    from mmldm.train.common import BatchRandom

    losses, kept = [], []
    for model in (plain, ckpt):
        saved = []

        def pack(t, saved=saved):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = generator_loss(model.train(), batch, cfg, abar, BatchRandom(0, 5))
        loss.backward()
        losses.append(loss.item())
        kept.append(sum(saved))
    assert kept[1] < kept[0] / 2  # the blocks' activations were not kept
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    grads = 0
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name
            grads += 1
    assert grads > 20


def test_ema_warm_up_tracks_the_model_from_the_first_steps():
    """With the warm-up the EMA follows a model that keeps moving; a constant 0.9999 would
    still hold the random initial weights (closed forms: decay 0.1 at step 0, 0.5 at 8)."""
    import copy

    from mmldm.train.common import ema_decay_at, ema_update

    assert ema_decay_at(0, 0.9999) == pytest.approx(0.1)
    assert ema_decay_at(8, 0.9999) == pytest.approx(0.5)
    assert ema_decay_at(10**6, 0.9999) == 0.9999 and ema_decay_at(10**6, 0.99) == 0.99
    model = torch.nn.Linear(4, 4)
    warm, constant = (copy.deepcopy(model).requires_grad_(False) for _ in range(2))
    init = model.weight.detach().clone()
    for step in range(200):
        with torch.no_grad():
            model.weight += 0.01  # the model moves by 2.0 in all
        ema_update(warm, model, ema_decay_at(step, 0.9999))
        ema_update(constant, model, 0.9999)
    moved = (model.weight - init).abs().mean()
    assert (warm.weight - model.weight).abs().mean() < 0.2 * moved
    assert (constant.weight - init).abs().mean() < 0.05 * moved
