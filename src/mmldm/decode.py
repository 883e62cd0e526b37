"""Latents <-> signals with a trained autoencoder: encode clips to (z_a, z_v), decode them back
to frames, audio image, mel and waveform (docs/design.md §4, "Decoding latents to signals").

Decoding runs the signal decoder's diffusion for all F frames and the audio image as ONE batch
(frame indices t / F), with classifier-free guidance per modality (2.5 in the paper), then the
VAE decoder, the inverse audio image and the vocoder. The class given to the decoder is the
classification head's prediction from (s_a, s_v), as in the paper.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmldm.audio.mel import audio_image_to_mel
from mmldm.audio.vocoder import Vocoder
from mmldm.checkpoint import CheckpointError, load_checkpoint, load_weights
from mmldm.config import Config
from mmldm.diffusion.sampling import (
    EpsFn,
    few_step_sample,
    few_step_timesteps,
    guided,
    sample_loop,
)
from mmldm.diffusion.schedule import alphas_cumprod, make_sampler
from mmldm.models.autoencoder import MultiModalAutoencoder, vae_inputs
from mmldm.models.signal_decoder import DecoderCondition, SignalDecoder
from mmldm.models.vae import TinyVAEDecoder, build_vae
from mmldm.models.vae import decode as vae_decode

log = logging.getLogger(__name__)


def load_autoencoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    decoder: str | Path | None = None,
) -> tuple[MultiModalAutoencoder, torch.nn.Module, Config]:
    """(autoencoder, VAE, config) from an autoencoder run, checkpoint folder or weights file.

    ``decoder``: a distilled signal decoder (``mmldm distill-decoder`` run or checkpoint) to
    decode with instead of the autoencoder's own; its sampling settings (few_step, K steps, no
    guidance) replace the ``sample.decoder_*`` keys of the returned config.
    """
    ckpt = load_checkpoint(path, kind="autoencoder")
    cfg = ckpt.config
    model = MultiModalAutoencoder(cfg)
    load_weights(model, ckpt.state_dict("autoencoder"), source=str(ckpt.path))
    vae = build_vae(cfg.vae)
    load_weights(vae, ckpt.state_dict("vae"), source=str(ckpt.path))
    if decoder is not None:
        cfg = model.cfg = load_distilled_decoder(model, decoder, path)
    for module in (model, vae):
        module.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:
            module.to(dtype)
    return model, vae, cfg


def with_decoder_sampling(
    cfg: Config, sampler: str, steps: int, guidance_audio: float, guidance_video: float
) -> Config:
    """``cfg`` with the signal decoder's sampling settings (``sample.decoder_*``) replaced:
    what :func:`decode_latents` reads from the model's config."""
    sample = dataclasses.replace(
        cfg.sample,
        decoder_sampler=sampler,
        decoder_steps=steps,
        decoder_guidance_audio=guidance_audio,
        decoder_guidance_video=guidance_video,
    )
    return dataclasses.replace(cfg, sample=sample)


def _distilled_checkpoint(path: str | Path, autoencoder: str | Path):
    """A ``distill`` checkpoint, refused unless distilled from ``autoencoder``: a distilled
    decoder reads the latents of that autoencoder's encoders and VAE."""
    from mmldm.data.latents import autoencoder_fingerprint

    ckpt = load_checkpoint(path, kind="distill")
    expected = ckpt.metadata.get("mmldm.autoencoder_fingerprint")
    found = autoencoder_fingerprint(autoencoder)
    if expected != found:
        raise CheckpointError(
            f"{ckpt.path} was distilled from the decoder of "
            f"{ckpt.metadata.get('mmldm.autoencoder')} (fingerprint {expected}), not of "
            f"{autoencoder} ({found})"
        )
    return ckpt


def load_distilled_decoder(
    model: MultiModalAutoencoder, decoder: str | Path, autoencoder: str | Path
) -> Config:
    """Load a distilled signal decoder (``mmldm distill-decoder``) into ``model.decoder``;
    returns the model's config with the decoder's sampling settings."""
    ckpt = _distilled_checkpoint(decoder, autoencoder)
    load_weights(model.decoder, ckpt.state_dict("decoder"), source=str(ckpt.path))
    own = ckpt.config.sample
    log.info(
        "decoder %s (step %d): %s, %d steps",
        ckpt.path,
        ckpt.step,
        own.decoder_sampler,
        own.decoder_steps,
    )
    return with_decoder_sampling(
        model.cfg,
        own.decoder_sampler,
        own.decoder_steps,
        own.decoder_guidance_audio,
        own.decoder_guidance_video,
    )


def load_vae_decoder(
    path: str | Path,
    autoencoder: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TinyVAEDecoder:
    """A tiny VAE decoder (``mmldm distill-vae``) of ``autoencoder``'s VAE, to decode latents
    with in place of the KL-VAE's decoder (``decode_latents(..., vae=<it>)``)."""
    ckpt = _distilled_checkpoint(path, autoencoder)
    tiny = TinyVAEDecoder(ckpt.config)
    load_weights(tiny, ckpt.state_dict("vae_decoder"), source=str(ckpt.path))
    log.info("VAE decoder %s (step %d)", ckpt.path, ckpt.step)
    return tiny.to(device, dtype).eval().requires_grad_(False)


@torch.no_grad()
def encode_clips(
    model: MultiModalAutoencoder,
    vae,
    video: torch.Tensor,
    audio: torch.Tensor,
    sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips ``video [B, F, 3, S, S]``, ``audio [B, N]`` -> (z_a, z_v); posterior means unless
    ``sample``."""
    inputs = vae_inputs(vae, model.cfg, video, audio, num_targets=0)
    enc = model.encode(inputs.key_latents, inputs.audio_latent, sample=sample)
    return enc.z_a, enc.z_v


@torch.no_grad()
def encode_audio(model: MultiModalAutoencoder, vae, audio: torch.Tensor) -> torch.Tensor:
    """Audio ``[B, N]`` -> z_a (posterior mean), without any video."""
    from mmldm.audio.mel import audio_image
    from mmldm.models.vae import encode

    image = audio_image(audio, model.cfg.data)
    latent = encode(vae, image.to(next(vae.parameters()).dtype))
    return model.audio_encoder(latent).mean


@torch.no_grad()
def encode_video(model: MultiModalAutoencoder, vae, video: torch.Tensor) -> torch.Tensor:
    """Frames ``[B, F, 3, S, S]`` in [-1, 1] -> z_v (posterior mean), without any audio."""
    from mmldm.models.vae import encode

    key = video[:, model.cfg.autoencoder.key_frames]  # [B, K, 3, S, S]
    latents = encode(vae, key.flatten(0, 1).to(next(vae.parameters()).dtype))
    return model.video_encoder(latents.unflatten(0, key.shape[:2])).mean


def decoder_denoiser(
    decoder: SignalDecoder,
    cfg: Config,
    z_a: torch.Tensor,
    z_v: torch.Tensor,
    s_a: torch.Tensor,
    s_v: torch.Tensor,
    labels: torch.Tensor | None,
    frame_index: torch.Tensor,
    guidance_audio: float = 1.0,
    guidance_video: float = 1.0,
) -> EpsFn:
    """The signal decoder as one ``eps_fn(x, t)`` over B audio latents followed by B*n frame
    latents (one UNet batch), with classifier-free guidance per modality (eq. 9) when a scale
    is not 1: the conditional and null rows then share that batch too.

    Args:
        z_a, z_v: ``[B, C, h, w]`` perceptual latents; s_a, s_v: their semantic features.
        labels: ``[B]`` the decoder's class (the classifier's prediction) or None.
        frame_index: ``[B, n]`` long, the frames to decode per clip (n = F to decode clips).
    """
    b, n = frame_index.shape

    def rep(x: torch.Tensor | None) -> torch.Tensor | None:  # per clip -> per target frame
        return None if x is None else x.repeat_interleave(n, 0)

    index = frame_index.flatten().to(z_a.dtype) / cfg.data.num_frames  # [B*n]: i / F
    ones_a = torch.ones(b, device=z_a.device)
    ones_v = torch.ones(b * n, device=z_a.device)

    def conds(keep: float) -> tuple[DecoderCondition, DecoderCondition]:
        ca = decoder.condition("audio", z_a, s_v, labels, keep * ones_a)
        cv = decoder.condition(
            "video", rep(z_v), rep(s_a), rep(labels), keep * ones_v, frame_index=index
        )
        return ca, cv

    guide = guidance_audio != 1.0 or guidance_video != 1.0
    cond_a, cond_v = conds(1.0)
    if guide:  # conditional and null rows in one batch: one UNet pass per step, not two
        null_a, null_v = conds(0.0)
        cond_a = DecoderCondition.cat([cond_a, null_a])
        cond_v = DecoderCondition.cat([cond_v, null_v])

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xa, xv, ta, tv = x[:b], x[b:], t[:b], t[b:]
        if not guide:
            return torch.cat(decoder.predict_both(xa, ta, cond_a, xv, tv, cond_v))
        ea, ev = decoder.predict_both(
            xa.repeat(2, 1, 1, 1), ta.repeat(2), cond_a, xv.repeat(2, 1, 1, 1), tv.repeat(2), cond_v
        )
        ea, ev = guided(*ea.chunk(2), guidance_audio), guided(*ev.chunk(2), guidance_video)
        return torch.cat([ea, ev])

    return eps_fn


def decoder_noise(
    cfg: Config,
    b: int,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Starting noise ``[B + B*n, 4, R, R]`` (audio latents, then n frames per clip): one draw
    per frame, or one per clip for all its frames with ``sample.decoder_shared_noise``."""
    latent = (cfg.vae.latent_channels, cfg.vae_latent_size, cfg.vae_latent_size)
    x_a = torch.randn((b, *latent), generator=generator, device=device, dtype=dtype)
    draws = 1 if cfg.sample.decoder_shared_noise else n
    x_v = torch.randn((b, draws, *latent), generator=generator, device=device, dtype=dtype)
    return torch.cat([x_a, x_v.expand(-1, n, -1, -1, -1).flatten(0, 1)])


def run_decoder_sampler(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    cfg: Config,
    sampler: str,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """x_0 from ``x_T`` with ``sampler``: ddim / dpm (diffusers, :func:`sample_loop`) or
    few_step (:func:`few_step_sample`, the distilled decoder's)."""
    if sampler == "few_step":
        times = few_step_timesteps(steps, cfg.diffusion.num_train_timesteps)
        abar = alphas_cumprod(cfg.diffusion)
        return few_step_sample(eps_fn, x_T, times, abar, cfg.diffusion.prediction_type)
    scheduler = make_sampler(cfg.diffusion, sampler)
    return sample_loop(
        eps_fn, x_T, scheduler, steps, eta=cfg.sample.eta, generator=generator, desc=desc
    )


@dataclass
class DecodedClips:
    frames: torch.Tensor  # [B, F, 3, S, S] in [-1, 1]
    audio_image: torch.Tensor  # [B, 3, S, S] in [-1, 1]
    mel: torch.Tensor  # [B, n_mels, T] natural-log mel
    wave: torch.Tensor  # [B, N] in [-1, 1]
    sample_rate: int


@torch.no_grad()
def decode_latents(
    model: MultiModalAutoencoder,
    vae: torch.nn.Module,
    vocoder: Vocoder,
    z_a: torch.Tensor,
    z_v: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance_audio: float | None = None,
    guidance_video: float | None = None,
    generator: torch.Generator | None = None,
    vae_batch: int = 32,
    desc: str | None = None,
) -> DecodedClips:
    """(z_a ``[B, C, h_a, w_a]``, z_v ``[B, C, h_v, w_v]``) -> frames, audio image, mel, waveform.

    Defaults come from the config's ``sample`` section (50 DDIM steps, guidance 2.5 / 2.5; a
    distilled decoder's config says few_step, K steps, no guidance). ``vae``: the KL-VAE or a
    :class:`TinyVAEDecoder` (:func:`load_vae_decoder`); only its decoder is used.
    """
    cfg = model.cfg
    sc = cfg.sample
    steps = steps or sc.decoder_steps
    g_a = sc.decoder_guidance_audio if guidance_audio is None else guidance_audio
    g_v = sc.decoder_guidance_video if guidance_video is None else guidance_video
    b, f = len(z_a), cfg.data.num_frames
    s_a, s_v = model.semantics(z_a, z_v)
    if labels is None:
        labels = model.predict_class(s_a, s_v)
    frame_index = torch.arange(f, device=z_a.device).repeat(b, 1)  # [B, F]: every frame
    eps_fn = decoder_denoiser(model.decoder, cfg, z_a, z_v, s_a, s_v, labels, frame_index, g_a, g_v)
    x_T = decoder_noise(cfg, b, f, generator=generator, device=z_a.device, dtype=z_a.dtype)
    sampler = sampler or sc.decoder_sampler
    x0 = run_decoder_sampler(eps_fn, x_T, cfg, sampler, steps, generator=generator, desc=desc)
    images = torch.cat([vae_decode(vae, chunk) for chunk in x0.split(vae_batch)]).clamp(-1, 1)
    audio_image, frames = images[:b], images[b:].unflatten(0, (b, f))
    settings = cfg.data.mel
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    mel = audio_image_to_mel(audio_image.float(), settings.n_mels, settings.num_frames(n))
    wave = vocoder(mel)
    wave = F.pad(wave, (0, max(0, n - wave.shape[-1])))[:, :n]
    return DecodedClips(frames.float(), audio_image.float(), mel, wave, cfg.data.sample_rate)
