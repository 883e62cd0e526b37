"""The networks' own configs, composed from the experiment config's sections.

Each network takes a small dataclass of its own (``MultiModalDiT(dit_config(cfg))``, as
nanoGPT's ``GPT(GPTConfig)``); this module is the one place that reads the experiment
:class:`~mmldm.config.Config` for them, so the networks never see it.
"""

from __future__ import annotations

from mmldm.config import Config
from mmldm.models.autoencoder import MultiModalAutoencoderConfig
from mmldm.models.discriminator import TripletDiscriminatorConfig
from mmldm.models.dit import MultiModalDiTConfig
from mmldm.models.signal_decoder import SignalDecoderConfig


def dit_config(cfg: Config) -> MultiModalDiTConfig:
    d, ae = cfg.dit, cfg.autoencoder
    return MultiModalDiTConfig(
        audio_shape=cfg.audio_latent_shape,
        video_shape=cfg.video_latent_shape,
        hidden_size=d.hidden_size,
        depth=d.depth,
        num_heads=d.num_heads,
        mlp_ratio=d.mlp_ratio,
        patch_size=d.patch_size,
        num_context_tokens=d.num_context_tokens,
        num_classes=cfg.data.num_classes if d.class_conditional else 0,
        frame_channels=ae.frame_channels if d.frame_tokens else 0,
        key_frames=tuple(ae.key_frames) if d.frame_tokens else (),
        long=d.long,
        long_depth=d.long_depth,
    )


def decoder_config(cfg: Config) -> SignalDecoderConfig:
    d, ae = cfg.decoder, cfg.autoencoder
    # class-conditional only with a classifier: it names the class at generation time
    labelled = ae.cl_weight > 0 and d.class_embedding
    return SignalDecoderConfig(
        vae_channels=cfg.vae.latent_channels,
        vae_size=cfg.vae_latent_size,
        z_channels=ae.latent_channels,
        audio_size=cfg.audio_latent_shape[1],
        video_size=cfg.video_latent_shape[1],
        semantic_dim=ae.semantic_dim,
        num_frames=cfg.data.num_frames,
        key_frames=tuple(ae.key_frames),
        frame_channels=ae.frame_channels,
        frame_index_scale=d.frame_index_scale,
        block_out_channels=tuple(d.block_out_channels),
        layers_per_block=d.layers_per_block,
        attention_heads=d.attention_heads,
        cross_attention_dim=d.cross_attention_dim,
        num_modality_tokens=d.num_modality_tokens,
        shared=d.shared,
        content_feature=d.content_feature,
        num_classes=cfg.data.num_classes if labelled else 0,
    )


def autoencoder_config(cfg: Config) -> MultiModalAutoencoderConfig:
    ae = cfg.autoencoder
    return MultiModalAutoencoderConfig(
        vae_channels=cfg.vae.latent_channels,
        vae_size=cfg.vae_latent_size,
        latent_channels=ae.latent_channels,
        key_frames=tuple(ae.key_frames),
        frame_channels=ae.frame_channels,
        video_widths=tuple(ae.video_widths),
        audio_widths=tuple(ae.audio_widths),
        num_res_blocks=ae.num_res_blocks,
        head_channels=ae.head_channels,
        semantic_dim=ae.semantic_dim,
        semantic_size=ae.semantic_size,
        projector_width=ae.projector_width,
        video_projector_mults=tuple(ae.video_projector_mults),
        audio_projector_mults=tuple(ae.audio_projector_mults),
        video_projector_blocks=ae.video_projector_blocks,
        audio_projector_blocks=ae.audio_projector_blocks,
        projector_head_channels=ae.projector_head_channels,
        detach_projector_input=ae.detach_projector_input,
        # without labels (AudioSet) or with the ablation weight at 0 there is no head
        num_classes=cfg.data.num_classes if ae.cl_weight > 0 else 0,
        contrastive_dim=ae.contrastive_dim if ae.co_weight > 0 else 0,
        temperature_init=ae.temperature_init,
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
    d = cfg.discriminator
    return TripletDiscriminatorConfig(
        base_channels=d.base_channels,
        channel_mults=tuple(d.channel_mults),
        num_res_blocks=d.num_res_blocks,
        head_channels=d.head_channels,
        attention_resolutions=tuple(d.attention_resolutions),
    )
