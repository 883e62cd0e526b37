"""The networks' own configs, composed from the experiment config's sections.

Each network takes a small dataclass of its own (``MultiModalDiT(dit_config(cfg))``, as
nanoGPT's ``GPT(GPTConfig)``); this module is the one place that reads the experiment
:class:`~mmldm.config.Config` for them, so the networks never see it.
"""

from __future__ import annotations

import dataclasses

from mmldm.config import Config
from mmldm.models.autoencoder import MultiModalAutoencoderConfig
from mmldm.models.discriminator import TripletDiscriminatorConfig
from mmldm.models.dit import MultiModalDiTConfig
from mmldm.models.signal_decoder import SignalDecoderConfig


def _build(cls, section, **given):
    """``cls`` from ``given`` and, for each of its other fields, ``section``'s value of the same
    name (lists as tuples: the network configs are frozen)."""
    same = {
        f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.name not in given
    }
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in same.items()}, **given)


def dit_config(cfg: Config) -> MultiModalDiTConfig:
    d, ae = cfg.dit, cfg.autoencoder
    return _build(
        MultiModalDiTConfig,
        d,
        audio_shape=cfg.audio_latent_shape,
        video_shape=cfg.video_latent_shape,
        num_classes=cfg.data.num_classes if d.class_conditional else 0,
        frame_channels=ae.frame_channels if d.frame_tokens else 0,
        key_frames=tuple(ae.key_frames) if d.frame_tokens else (),
    )


def decoder_config(cfg: Config) -> SignalDecoderConfig:
    d, ae = cfg.decoder, cfg.autoencoder
    # class-conditional only with a classifier: it names the class at generation time
    labelled = ae.cl_weight > 0 and d.class_embedding
    return _build(
        SignalDecoderConfig,
        d,
        vae_channels=cfg.vae.latent_channels,
        vae_size=cfg.vae_latent_size,
        z_channels=ae.latent_channels,
        audio_size=cfg.audio_latent_shape[1],
        video_size=cfg.video_latent_shape[1],
        semantic_dim=ae.semantic_dim,
        num_frames=cfg.data.num_frames,
        key_frames=tuple(ae.key_frames),
        frame_channels=ae.frame_channels,
        num_classes=cfg.data.num_classes if labelled else 0,
    )


def autoencoder_config(cfg: Config) -> MultiModalAutoencoderConfig:
    ae = cfg.autoencoder
    return _build(
        MultiModalAutoencoderConfig,
        ae,
        vae_channels=cfg.vae.latent_channels,
        vae_size=cfg.vae_latent_size,
        # without labels (AudioSet) or with the ablation weight at 0 there is no head
        num_classes=cfg.data.num_classes if ae.cl_weight > 0 else 0,
        contrastive_dim=ae.contrastive_dim if ae.co_weight > 0 else 0,
        decoder=decoder_config(cfg),
    )


def tiny_vae_decoder_config(cfg: Config) -> dict[str, int]:
    """Arguments of :class:`mmldm.models.vae.TinyVAEDecoder` (``mmldm distill-vae``)."""
    return {
        "latent_channels": cfg.vae.latent_channels,
        "downsample": cfg.vae.downsample,
        "width": cfg.distill.vae_width,
        "depth": cfg.distill.vae_depth,
    }


def discriminator_config(cfg: Config) -> TripletDiscriminatorConfig:
    return _build(TripletDiscriminatorConfig, cfg.discriminator)
