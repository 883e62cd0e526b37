"""The networks' own configs, composed from the experiment config's sections.

Each network takes a small dataclass of its own (``MultiModalDiT(dit_config(cfg))``, as
nanoGPT's ``GPT(GPTConfig)``), composed from the experiment :class:`~mmldm.config.Config` by
a function here (the DiT, the discriminator) or, for the autoencoder and the networks that
decode its latents, by the codec that owns them (:func:`mmldm.codec.autoencoder_config`); the
networks never see the experiment config.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mmldm.models.discriminator import TripletDiscriminatorConfig
from mmldm.models.dit import MultiModalDiTConfig

if TYPE_CHECKING:  # read, not built here
    from mmldm.config import Config


def network_config(cls, section, **given):
    """``cls`` from ``given`` and, for each of its other fields, ``section``'s value of the same
    name (lists as tuples: the network configs are frozen)."""
    same = {
        f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.name not in given
    }
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in same.items()}, **given)


def dit_config(cfg: Config) -> MultiModalDiTConfig:
    d, ae = cfg.dit, cfg.autoencoder
    return network_config(
        MultiModalDiTConfig,
        d,
        audio_shape=cfg.audio_latent_shape,
        video_shape=cfg.video_latent_shape,
        num_classes=cfg.data.num_classes if d.class_conditional else 0,
        frame_channels=ae.frame_channels if d.frame_tokens else 0,
        key_frames=tuple(ae.key_frames) if d.frame_tokens else (),
    )


def discriminator_config(cfg: Config) -> TripletDiscriminatorConfig:
    return network_config(TripletDiscriminatorConfig, cfg.discriminator)
