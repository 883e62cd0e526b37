"""Stage 1 model: paper shapes, gradient paths (docs/design.md §8.1, §8.2, §8.4), a falling
loss."""

import dataclasses

import pytest
import torch

from mmldm.codec import autoencoder_config, build_vae, vae_inputs
from mmldm.config import load_config
from mmldm.models.autoencoder import MultiModalAutoencoder
from mmldm.models.discriminator import TripletDiscriminator
from mmldm.networks import discriminator_config
from mmldm.train.autoencoder import autoencoder_loss, discriminator_loss

SD1_UNET_PARAMETERS = 859_520_964  # Stable Diffusion 1.x UNet (v1-4 / v1-5)


def test_paper_config_shapes_and_decoder_size():
    """Built on the meta device: the paper's latent shapes and SD 1.x's UNet exactly."""
    from diffusers import UNet2DConditionModel

    cfg = load_config("paper_landscape")
    with torch.device("meta"):
        model = MultiModalAutoencoder(autoencoder_config(cfg))
        sd_unet = UNet2DConditionModel(  # the SD 1.x UNet config, as published with the model
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_dim=768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        key = torch.empty(2, 4, 4, 32, 32)
        audio = torch.empty(2, 4, 32, 32)
        enc = model.encode(key, audio)
    assert enc.z_v.shape == (2, 16, 16, 16)
    assert enc.z_a.shape == (2, 16, 8, 8)
    assert enc.s_v.shape == enc.s_a.shape == (2, 768, 2, 2)
    unet = model.decoder.unet("video")
    count = sum(p.numel() for p in unet.parameters())
    assert count == sum(p.numel() for p in sd_unet.parameters()) == SD1_UNET_PARAMETERS
    assert set(unet.state_dict()) == set(sd_unet.state_dict())  # SD weights load unchanged


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = MultiModalAutoencoder(autoencoder_config(cfg))
    vae = build_vae(cfg.vae).eval().requires_grad_(False)
    disc = TripletDiscriminator(discriminator_config(cfg))
    g = torch.Generator().manual_seed(1)
    b, f = 3, cfg.data.num_frames
    video = torch.rand(b, f, 3, 32, 32, generator=g) * 2 - 1
    t = torch.arange(6400) / 16000
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * (300 + 200 * i) * t) for i in range(b)])
    inputs = vae_inputs(vae, cfg, video, audio, 2, generator=g)
    labels = torch.tensor([0, 1, 2])
    return cfg, model, vae, disc, inputs, labels


def _grads(module):
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def test_adversarial_generator_loss_alone_reaches_the_decoder(setup):
    """docs/design.md §8.2: the generator side of the GAN has a gradient path into the decoder."""
    cfg, model, vae, disc, inputs, labels = setup
    gan_only = dataclasses.replace(
        cfg,
        autoencoder=dataclasses.replace(
            cfg.autoencoder, cl_weight=0.0, co_weight=0.0, kl_weight=0.0, gan_weight=1.0
        ),
    )
    model.zero_grad()
    torch.manual_seed(0)
    _, logs, gan = autoencoder_loss(model, inputs, labels, gan_only, vae=vae, discriminator=disc)
    # isolate the adversarial term: backprop only hinge_g on the fully reconstructed triplet
    from mmldm.models.discriminator import hinge_g_loss

    _, fakes = gan.triplets(detach=False)
    hinge_g_loss(disc(fakes[: len(labels)])).backward()
    unet_grads = _grads(model.decoder.unet("video"))
    assert unet_grads and max(g.abs().max().item() for g in unet_grads.values()) > 0
    assert "loss_gan_g" in logs
    # and the discriminator's own loss does not touch the decoder (reconstructions detached)
    model.zero_grad()
    discriminator_loss(disc, gan).backward()
    assert not _grads(model.decoder)


def test_more_target_frames_per_clip(setup):
    """autoencoder.target_frames frames per clip train the decoder; the discriminator judges
    two of them, in time order, against the same two real frames."""
    cfg, model, vae, disc, _, labels = setup
    g = torch.Generator().manual_seed(2)
    # each frame a constant grey whose level names its index, to check which frames were paired
    f = cfg.data.num_frames
    video = torch.linspace(-1, 1, f).view(1, f, 1, 1, 1).expand(3, f, 3, 32, 32)
    audio = 0.3 * torch.sin(torch.arange(6400) / 16000 * 2 * torch.pi * 440).expand(3, -1)
    inputs = vae_inputs(vae, cfg, video, audio, 4, generator=g)
    assert inputs.target_latents.shape[:2] == (3, 4)
    assert (inputs.target_index.diff(dim=1) > 0).all()
    torch.manual_seed(0)
    _, _, gan = autoencoder_loss(model, inputs, labels, cfg, vae=vae, discriminator=disc)
    assert gan.frames.shape[1] == gan.frames_hat.shape[1] == 2
    level = gan.frames[:, :, 0, 0, 0]  # [B, 2] grey levels = frame indices
    assert (level[:, 1] > level[:, 0]).all()
    picked = inputs.target_frames[:, :, 0, 0, 0]  # [B, 4]
    assert all(set(level[i].tolist()) <= set(picked[i].tolist()) for i in range(3))


def test_conditioning_weight_matrices_get_gradients(setup):
    """docs/design.md §8.1: the content and semantic MLPs learn (only their last layer is 0)."""
    cfg, model, vae, disc, inputs, labels = setup
    model.zero_grad()
    torch.manual_seed(0)
    loss, _, _ = autoencoder_loss(model, inputs, labels, cfg)
    loss.backward()
    for name in ("audio", "video"):
        branch = model.decoder.branches[name]
        last_content, last_semantic = branch.content[2], branch.semantic[2]
        assert last_content.weight.grad.abs().sum() > 0
        assert last_semantic.weight.grad.abs().sum() > 0
        # a first layer only gets gradient once the last is non-zero: take one step first
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    model.zero_grad()
    torch.manual_seed(0)
    loss, _, _ = autoencoder_loss(model, inputs, labels, cfg)
    loss.backward()
    for name in ("audio", "video"):
        branch = model.decoder.branches[name]
        for layer in (branch.content[0], branch.content[2], branch.semantic[0], branch.semantic[2]):
            assert layer.weight.grad.abs().sum() > 0, name
    # skip convs (zero-initialised 1x1) and the encoders are reached too
    assert model.decoder.branches["video"].skip_convs[0].weight.grad.abs().sum() > 0
    assert model.video_encoder.stem.weight.grad.abs().sum() > 0
    assert model.audio_encoder.net[0].weight.grad.abs().sum() > 0


def test_changing_s_a_changes_the_video_prediction(setup):
    cfg, model, vae, disc, inputs, labels = setup
    for layer in (model.decoder.branches["video"].semantic[2],):  # as after some training
        torch.nn.init.normal_(layer.weight, std=0.5)
    enc = model.encode(inputs.key_latents, inputs.audio_latent, sample=False)
    x = torch.randn(3, 4, 16, 16)
    t = torch.full((3,), 500)
    index = torch.zeros(3)
    keep = torch.ones(3)

    def predict(s_a):
        cond = model.decoder.condition("video", enc.z_v, s_a, labels, keep, frame_index=index)
        return model.decoder.predict("video", x, t, cond)

    with torch.no_grad():
        a, b = predict(enc.s_a), predict(enc.s_a + 1.0)
        null = model.decoder.condition("video", enc.z_v, enc.s_a, labels, 0 * keep, index)
        null2 = model.decoder.condition("video", 3 * enc.z_v, enc.s_a + 1, labels, 0 * keep, index)
    assert (a - b).abs().max() > 1e-3
    # the null condition (dropout for guidance) ignores every input
    assert torch.equal(null.context, null2.context)
    for r1, r2 in zip(null.residuals, null2.residuals, strict=True):
        assert torch.equal(r1, r2)


def test_frame_index_embedding_separates_neighbouring_frames():
    """docs/design.md §8.4: index / F in [0, 1) is scaled before the sinusoid."""
    from mmldm.models.blocks import sinusoidal_embedding

    cfg = load_config("paper_landscape")
    idx = torch.tensor([0, 1, 15]) / 16
    emb = sinusoidal_embedding(idx * cfg.decoder.frame_index_scale, 320)
    unscaled = sinusoidal_embedding(idx, 320)
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) < 0.9
    assert cos(unscaled[0], unscaled[1], dim=0) > 0.99  # the published code's defect


def test_loss_falls_on_a_fixed_batch(setup):
    cfg, _, vae, _, inputs, labels = setup
    torch.manual_seed(0)
    model = MultiModalAutoencoder(autoencoder_config(cfg))
    disc = TripletDiscriminator(discriminator_config(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(40):
        torch.manual_seed(step % 4)  # a fixed set of noises / timesteps, cycled
        loss, logs, _ = autoencoder_loss(model, inputs, labels, cfg, vae=vae, discriminator=disc)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss_mse_audio"] + logs["loss_mse_video"])
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.6 * first, (first, last)


def test_key_frame_weights_interpolate_between_key_frames():
    from mmldm.models.signal_decoder import key_frame_weights

    keys = torch.tensor([0.0, 2.0, 5.0, 7.0])
    w = key_frame_weights(torch.tensor([0.0, 1.0, 3.0, 5.0, 7.0, 9.0]), keys)
    expected = torch.tensor(
        [
            [1, 0, 0, 0],
            [0.5, 0.5, 0, 0],
            [0, 2 / 3, 1 / 3, 0],
            [0, 0, 1, 0],
            [0, 0, 0, 1],
            [0, 0, 0, 1],  # past the last key frame: clamped
        ]
    )
    torch.testing.assert_close(w, expected)
    assert torch.equal(
        key_frame_weights(torch.tensor([0.3]), torch.tensor([0.0])), torch.ones(1, 1)
    )


def test_frame_channels_keep_paper_shapes_and_route_each_frame_its_group():
    """autoencoder.frame_channels=N: z_v keeps its shape (16x16x16 in the paper), its last
    K * N channels are one group per key frame, and frame i's decoder branch reads frame i's."""
    cfg = load_config("paper_landscape", ["autoencoder.frame_channels=2"])
    assert cfg.autoencoder.clip_channels == 16 - 4 * 2
    with torch.device("meta"):
        model = MultiModalAutoencoder(autoencoder_config(cfg))
        enc = model.encode(torch.empty(2, 4, 4, 32, 32), torch.empty(2, 4, 32, 32))
    assert enc.z_v.shape == (2, 16, 16, 16) and enc.s_v.shape == (2, 768, 2, 2)
    with pytest.raises(Exception, match="frame_channels"):
        load_config("tiny", ["autoencoder.frame_channels=2"])  # 4 key frames x 2 > 4 channels

    torch.manual_seed(0)
    cfg = load_config("tiny", ["autoencoder.latent_channels=6", "autoencoder.frame_channels=1"])
    model = MultiModalAutoencoder(
        autoencoder_config(cfg)
    )  # 2 clip channels, then one channel per frame
    z_v = model.encode(torch.randn(1, 4, 4, 16, 16), torch.randn(1, 4, 16, 16)).z_v
    assert z_v.shape == (1, 6, 8, 8)
    branch = model.decoder.branches["video"]
    assert branch.frame_channels == 1 and branch.stem.in_channels == 6 + 1
    z = torch.randn(1, 6, 8, 8)
    s = torch.randn(1, *cfg.semantic_shape)
    with torch.no_grad():
        branch.stem.weight[:, :6] = 0  # only the selected group reaches the residuals now
        for conv in branch.skip_convs:
            torch.nn.init.normal_(conv.weight)
    for frame in range(4):
        group = 2 + frame

        def residual(latent, frame=frame):
            index = torch.tensor([frame / 4])
            cond = branch(latent, s, None, torch.ones(1), frame_index=index)
            return cond.residuals[0]

        other = z.clone()
        other[:, [c for c in range(6) if c != group]] += 5.0  # every other channel changes
        changed = z.clone()
        changed[:, group] += 5.0
        with torch.no_grad():
            assert torch.allclose(residual(z), residual(other), atol=1e-5)
            assert not torch.allclose(residual(z), residual(changed), atol=1e-3)


def test_decoder_without_class_embedding_ignores_labels():
    """decoder.class_embedding=false: no label reaches the decoder; class must come from z
    and the other modality's semantic feature."""
    torch.manual_seed(0)
    cfg = load_config("tiny", ["decoder.class_embedding=false"])
    model = MultiModalAutoencoder(autoencoder_config(cfg))
    assert model.decoder.class_embed is None and model.classifier is not None
    with_class = MultiModalAutoencoder(autoencoder_config(load_config("tiny"))).decoder
    z, s = torch.randn(2, 4, 4, 4), torch.randn(2, *cfg.semantic_shape)
    keep = torch.ones(2)
    a = model.decoder.condition("audio", z, s, torch.tensor([0, 1]), keep)
    b = model.decoder.condition("audio", z, s, torch.tensor([2, 2]), keep)
    assert torch.equal(a.context, b.context)
    labelled = with_class.condition("audio", z, s, torch.tensor([0, 1]), keep)
    assert labelled.context.shape[1] == a.context.shape[1] + 1  # the class token is gone


@pytest.mark.parametrize("shared", [False, True])
def test_shared_decoder_noise_gives_frames_one_start(shared):
    """sample.decoder_shared_noise: every frame of a clip starts from the same noise. At
    initialisation the conditioning is a no-op (zero-initialised last layers), so frames then
    decode identically; with a draw per frame they differ."""
    from mmldm.codec import Codec

    torch.manual_seed(0)
    cfg = load_config("tiny", [f"sample.decoder_shared_noise={str(shared).lower()}"])
    model = MultiModalAutoencoder(autoencoder_config(cfg)).eval()
    vae = build_vae(cfg.vae).eval()
    z_a, z_v = torch.randn(2, *cfg.audio_latent_shape), torch.randn(2, *cfg.video_latent_shape)
    out = Codec(cfg, model, vae).decode(z_a, z_v, steps=2, generator=torch.Generator())
    same = torch.allclose(out.frames[:, :1].expand_as(out.frames), out.frames, atol=1e-5)
    assert same == shared


def test_vae_latent_cache_encodes_each_clip_once_and_draws_from_its_posterior(setup, monkeypatch):
    from mmldm.codec import VAELatentCache

    cfg, _, vae, _, _, _ = setup
    g = torch.Generator().manual_seed(3)
    video = torch.rand(3, cfg.data.num_frames, 3, 32, 32, generator=g) * 2 - 1
    audio = 0.3 * torch.sin(torch.arange(6400) / 16000 * 2 * torch.pi * 440).expand(3, -1)
    cache = VAELatentCache(vae)
    calls, encode = [], vae.encode
    monkeypatch.setattr(vae, "encode", lambda x: calls.append(len(x)) or encode(x))
    keys = [("a.mp4", 0.0), ("b.mp4", 0.0), ("a.mp4", 0.4)]
    inputs = vae_inputs(vae, cfg, video, audio, 2, cache=cache, keys=keys, generator=g)
    assert calls == [3 * (cfg.data.num_frames + 1)]  # every frame and the audio image, once
    again = vae_inputs(vae, cfg, video, audio, 2, cache=cache, keys=keys[::-1], generator=g)
    assert calls == [3 * (cfg.data.num_frames + 1)] and len(cache.store) == 3
    monkeypatch.undo()
    plain = vae_inputs(vae, cfg, video, audio, 2, generator=g)
    for a, b in ((inputs, plain), (again, plain)):
        assert a.key_latents.shape == b.key_latents.shape
        assert a.target_latents.shape == b.target_latents.shape
        assert a.audio_latent.shape == b.audio_latent.shape
    # the draws come from each frame's posterior: mean +- a few std
    dist = vae.encode(video[0].float()).latent_dist
    scale = vae.config.scaling_factor
    deviation = (inputs.key_latents[0] / scale - dist.mean[cfg.autoencoder.key_frames]).abs()
    assert (deviation <= 6 * dist.std[cfg.autoencoder.key_frames] + 1e-4).all()
