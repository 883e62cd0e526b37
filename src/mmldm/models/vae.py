"""Stage 0: encoding and decoding with the KL-VAE (diffusers ``AutoencoderKL``; building and
loading it is :mod:`mmldm.codec`'s), and a tiny distilled decoder of its latents.

Latents follow Stable Diffusion: a posterior sample times ``scaling_factor`` (0.18215).
"""

from __future__ import annotations

import logging
import math

import torch
from diffusers import AutoencoderKL

log = logging.getLogger(__name__)


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

    def __init__(self, latent_channels: int, downsample: int, width: int, depth: int) -> None:
        """``downsample``: the KL-VAE's factor f; ``width`` channels and ``depth`` blocks per
        level (distill.vae_width, distill.vae_depth)."""
        super().__init__()
        from diffusers import AutoencoderTiny

        levels = int(math.log2(downsample)) + 1  # x2 upsampling between levels
        # the decoder of diffusers' public AutoencoderTiny (its DecoderTiny; the encoder, one
        # block per level, is dropped at once)
        self.decoder = AutoencoderTiny(
            out_channels=3,
            latent_channels=latent_channels,
            encoder_block_out_channels=(width,) * levels,
            num_encoder_blocks=(1,) * levels,
            decoder_block_out_channels=(width,) * levels,
            num_decoder_blocks=(depth,) * (levels - 1) + (1,),
            upsampling_scaling_factor=2,
            act_fn="relu",
            upsample_fn="nearest",
        ).decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``[N, C, h, w]`` -> images ``[N, 3, f h, f w]`` in [-1, 1]."""
        return self.decoder(latents)
