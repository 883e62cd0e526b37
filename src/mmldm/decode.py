"""Latents <-> signals with a trained autoencoder: encode clips to (z_a, z_v), decode them back
to frames, audio image, mel and waveform (DESIGN.md 4, "Decoding latents to signals").

Decoding runs the signal decoder's diffusion for all F frames and the audio image as ONE batch
(frame indices t / F), with classifier-free guidance per modality (2.5 in the paper), then the
VAE decoder, the inverse audio image and the vocoder. The class given to the decoder is the
classification head's prediction from (s_a, s_v), as in the paper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmldm.audio.mel import MelSettings, audio_image_to_mel
from mmldm.audio.vocoder import Vocoder
from mmldm.checkpoint import load_checkpoint, load_weights
from mmldm.config import Config
from mmldm.diffusion.sampling import guided, sample_loop
from mmldm.diffusion.schedule import make_sampler
from mmldm.models.autoencoder import MultiModalAutoencoder, vae_inputs
from mmldm.models.signal_decoder import DecoderCondition
from mmldm.models.vae import build_vae
from mmldm.models.vae import decode as vae_decode

log = logging.getLogger(__name__)


def load_autoencoder(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[MultiModalAutoencoder, torch.nn.Module, Config]:
    """(autoencoder, VAE, config) from an autoencoder run, checkpoint folder or weights file."""
    ckpt = load_checkpoint(path, kind="autoencoder")
    cfg = ckpt.config
    model = MultiModalAutoencoder(cfg)
    load_weights(model, ckpt.state_dict("autoencoder"), source=str(ckpt.path))
    vae = build_vae(cfg.vae)
    load_weights(vae, ckpt.state_dict("vae"), source=str(ckpt.path))
    for module in (model, vae):
        module.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:
            module.to(dtype)
    return model, vae, cfg


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
    vae,
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

    Defaults come from the config's ``sample`` section (50 DDIM steps, guidance 2.5 / 2.5).
    """
    cfg, dec = model.cfg, model.decoder
    sc = cfg.sample
    steps = steps or sc.decoder_steps
    g_a = sc.decoder_guidance_audio if guidance_audio is None else guidance_audio
    g_v = sc.decoder_guidance_video if guidance_video is None else guidance_video
    b, f = len(z_a), cfg.data.num_frames
    device, dtype = z_a.device, z_a.dtype
    s_a, s_v = model.semantics(z_a, z_v)
    if labels is None:
        labels = model.predict_class(s_a, s_v)

    def rep(x: torch.Tensor | None) -> torch.Tensor | None:  # per clip -> per frame
        return None if x is None else x.repeat_interleave(f, 0)

    index = torch.arange(f, device=device).repeat(b).to(dtype) / f  # [B*F]: t / F
    ones_a, ones_v = torch.ones(b, device=device), torch.ones(b * f, device=device)

    def conds(keep_a: torch.Tensor, keep_v: torch.Tensor):
        ca = dec.condition("audio", z_a, s_v, labels, keep_a)
        cv = dec.condition("video", rep(z_v), rep(s_a), rep(labels), keep_v, frame_index=index)
        return ca, cv

    guide = g_a != 1.0 or g_v != 1.0
    cond_a, cond_v = conds(ones_a, ones_v)
    if guide:  # conditional and null rows in one batch: one UNet pass per step, not two
        null_a, null_v = conds(0 * ones_a, 0 * ones_v)
        cond_a = DecoderCondition.cat([cond_a, null_a])
        cond_v = DecoderCondition.cat([cond_v, null_v])
    latent = (cfg.vae.latent_channels, cfg.vae_latent_size, cfg.vae_latent_size)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        xa, xv, ta, tv = x[:b], x[b:], t[:b], t[b:]
        if not guide:
            return torch.cat(dec.predict_both(xa, ta, cond_a, xv, tv, cond_v))
        ea, ev = dec.predict_both(
            xa.repeat(2, 1, 1, 1), ta.repeat(2), cond_a, xv.repeat(2, 1, 1, 1), tv.repeat(2), cond_v
        )
        ea, ev = guided(*ea.chunk(2), g_a), guided(*ev.chunk(2), g_v)  # (cond, null) halves
        return torch.cat([ea, ev])

    x_a = torch.randn((b, *latent), generator=generator, device=device, dtype=dtype)
    noise_frames = 1 if sc.decoder_shared_noise else f  # one draw per clip, or per frame
    x_v = torch.randn((b, noise_frames, *latent), generator=generator, device=device, dtype=dtype)
    x_T = torch.cat([x_a, x_v.expand(-1, f, -1, -1, -1).flatten(0, 1)])  # [B + B*F, ...]
    scheduler = make_sampler(cfg.diffusion, sampler or sc.decoder_sampler)
    x0 = sample_loop(eps_fn, x_T, scheduler, steps, eta=sc.eta, generator=generator, desc=desc)
    images = torch.cat([vae_decode(vae, chunk) for chunk in x0.split(vae_batch)]).clamp(-1, 1)
    audio_image, frames = images[:b], images[b:].unflatten(0, (b, f))
    settings = MelSettings.from_config(cfg.data)
    n = int(round(cfg.data.clip_seconds * cfg.data.sample_rate))
    mel = audio_image_to_mel(audio_image.float(), settings.n_mels, settings.num_frames(n))
    wave = vocoder(mel)
    wave = F.pad(wave, (0, max(0, n - wave.shape[-1])))[:, :n]
    return DecodedClips(frames.float(), audio_image.float(), mel, wave, cfg.data.sample_rate)
