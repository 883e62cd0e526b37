"""Stage 0: the KL-VAE (diffusers ``AutoencoderKL``), built from config or loaded from disk.

Sources ``vae.pretrained`` may name (nothing is ever downloaded):
    - a diffusers folder (``config.json`` + weights; also a pipeline folder with ``vae/``),
    - an original latent-diffusion / Stable Diffusion single file (``.ckpt``, ``.safetensors``,
      full pipeline or VAE only), converted with diffusers' own key mapping,
    - an mmldm ``train-vae`` run or checkpoint (its config holds the architecture).

Latents follow Stable Diffusion: a posterior sample times ``scaling_factor`` (0.18215).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from mmldm.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_file,
    load_weights,
    read_metadata,
    resolve_checkpoint,
)
from mmldm.config import Config, VAEConfig

log = logging.getLogger(__name__)


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """A randomly initialised AutoencoderKL of the configured architecture."""
    n = len(cfg.block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=min(32, min(cfg.block_out_channels)),
        scaling_factor=cfg.scaling_factor,
    )
    # Start with a small posterior variance (log-variance -6): trained from scratch with a
    # unit-variance posterior, a small VAE spends its first thousands of steps learning to
    # shrink the noise that drowns small details (here: the colour of a small object).
    with torch.no_grad():
        vae.encoder.conv_out.bias[cfg.latent_channels :].fill_(-6.0)
    return vae


def _is_mmldm_checkpoint(path: Path) -> bool:
    try:
        weights = resolve_checkpoint(path)
    except CheckpointError:
        return False
    return "mmldm.config" in read_metadata(weights)


def load_vae(cfg: VAEConfig) -> AutoencoderKL:
    """The VAE named by ``cfg.pretrained``, or a fresh one of ``cfg``'s architecture."""
    if cfg.pretrained is None:
        return build_vae(cfg)
    path = Path(cfg.pretrained)
    if not path.exists():
        raise CheckpointError(f"VAE weights not found: {path} (config key vae.pretrained)")
    if _is_mmldm_checkpoint(path):
        ckpt = load_checkpoint(path, kind="vae")
        vae = build_vae(ckpt.config.vae)
        load_weights(vae, ckpt.state_dict("vae"), source=str(ckpt.path))
    elif path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{path}: a diffusers VAE folder needs config.json")
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True)
    else:
        vae = _from_single_file(path, cfg)
    if vae.config.latent_channels != cfg.latent_channels:
        raise CheckpointError(
            f"{path}: the VAE has {vae.config.latent_channels} latent channels, config key "
            f"vae.latent_channels says {cfg.latent_channels}"
        )
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if factor != cfg.downsample:
        raise CheckpointError(
            f"{path}: the VAE downsamples by {factor}, vae.block_out_channels implies "
            f"{cfg.downsample}"
        )
    return vae


def adopt_vae_scaling(cfg: Config, vae: AutoencoderKL) -> Config:
    """``cfg`` with ``vae.scaling_factor`` set to the loaded VAE's own.

    A pretrained VAE brings its latent scale (Stable Diffusion's 0.18215, or the factor that
    ``train-vae`` calibrated for a VAE trained from scratch). Every later stage stores this
    config and rebuilds the VAE from it, so it must hold the scale the latents were made with:
    a stale value rescales every latent at sampling time.
    """
    import dataclasses

    factor = float(vae.config.scaling_factor)
    if factor == cfg.vae.scaling_factor:
        return cfg
    log.info(
        "vae.scaling_factor %.5f from the pretrained VAE %s (the config said %.5f)",
        factor,
        cfg.vae.pretrained,
        cfg.vae.scaling_factor,
    )
    return dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scaling_factor=factor))


def _from_single_file(path: Path, cfg: VAEConfig) -> AutoencoderKL:
    """An original LDM / SD checkpoint file (VAE only or a whole pipeline)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    try:
        sd = load_state_dict_file(path, key="state_dict")
    except CheckpointError:
        sd = load_state_dict_file(path)
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    vae = build_vae(cfg)
    if not any(k.startswith("encoder.down_blocks.") for k in sd):  # original LDM key names
        sd = convert_ldm_vae_checkpoint(sd, dict(vae.config))
    load_weights(vae, sd, source=str(path))
    return vae


@torch.no_grad()
def encode(vae: AutoencoderKL, images: torch.Tensor, sample: bool = True) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] -> scaled latents ``[B, C, H / f, W / f]``.

    ``sample``: a posterior sample (the paper) or the posterior mean.
    """
    posterior = vae.encode(images).latent_dist
    z = posterior.sample() if sample else posterior.mean
    return z * vae.config.scaling_factor


def decode(vae: AutoencoderKL | TinyVAEDecoder, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (not clamped: callers clamp for display), with the
    KL-VAE's decoder or a distilled :class:`TinyVAEDecoder`."""
    if isinstance(vae, TinyVAEDecoder):
        return vae(latents)
    return vae.decode(latents / vae.config.scaling_factor).sample


class TinyVAEDecoder(torch.nn.Module):
    """A small decoder for the KL-VAE's latents (``mmldm distill-vae``): diffusers'
    ``DecoderTiny``, the decoder of ``AutoencoderTiny`` (TAESD's architecture: plain conv blocks,
    nearest upsampling, no attention, no normalisation), with one upsampling per factor 2 of
    the VAE. Reads scaled latents (as TAESD does), returns images in [-1, 1].

    Paper config (f = 8, width 64, 3 blocks per level): 1.2M parameters against the KL-VAE
    decoder's 49.5M (benchmarks/flops.py counts both).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        from diffusers.models.autoencoders.vae import DecoderTiny

        d = cfg.distill
        levels = int(math.log2(cfg.vae.downsample)) + 1  # x2 upsampling between levels
        self.decoder = DecoderTiny(
            in_channels=cfg.vae.latent_channels,
            out_channels=3,
            num_blocks=(d.vae_depth,) * (levels - 1) + (1,),
            block_out_channels=(d.vae_width,) * levels,
            upsampling_scaling_factor=2,
            act_fn="relu",
            upsample_fn="nearest",
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[N, C, h, w]`` -> images ``[N, 3, f h, f w]`` in [-1, 1]."""
        return self.decoder(latents)
