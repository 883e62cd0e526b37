"""What a training stage starts from: refuse to train silently on random pretrained parts.

The paper builds on Stable Diffusion 1.x: its KL-VAE encodes every frame and audio image
(frozen in every stage but the VAE's own decoder fine-tuning), and its UNet initialises the
signal decoder. Nothing is ever downloaded, so those weights are local paths in the config
(``vae.pretrained``, ``decoder.pretrained_unet``; ``--vae`` / ``--unet``). When one is left
empty, the network it names would start from random weights, and two cases are never what a
user wants without saying so:

* a **frozen random encoder**: ``train-vae`` fine-tuning only the decoder of a VAE that has no
  weights, or ``train-autoencoder`` on the latents of a random VAE (it learns on noise);
* the **860M-parameter decoder UNet in SD's layout from scratch**: the paper fine-tunes it; from
  random weights it needs far more data and steps than the presets budget.

Both refuse to start with one line naming the missing files and where they come from
(docs/weights.md), unless ``train.allow_random_init`` (``--allow-random-init``) says that random
weights are meant: small configs trained from scratch (the tests' tiny preset) do.
A decoder UNet in another layout than SD's cannot take SD's weights, so it starts from random
weights without asking (the demo's).
"""

from __future__ import annotations

from mmldm.config import Config, ConfigError, DecoderConfig

# Stable Diffusion 1.x's UNet (CompVis / runwayml v1-4, v1-5): what decoder.pretrained_unet loads
SD_UNET_LAYOUT = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
}
WHERE = "docs/weights.md says where to get them"
OPT_OUT = "--allow-random-init (train.allow_random_init=true) to start from random weights"


def sd_unet_layout(cfg: DecoderConfig) -> bool:
    """True when the signal decoder has Stable Diffusion 1.x's UNet shape (and could load it)."""
    return all(getattr(cfg, key) == value for key, value in SD_UNET_LAYOUT.items())


def check_starting_weights(cfg: Config, stage: str) -> None:
    """Raise :class:`ConfigError` (one line) when ``stage`` ("vae", "autoencoder") would train
    on top of a random frozen VAE or start the SD-sized decoder UNet from random weights,
    unless ``cfg.train.allow_random_init``."""
    if cfg.train.allow_random_init or stage not in ("vae", "autoencoder"):
        return
    vae_files = (
        "Stable Diffusion's VAE (a diffusers folder: config.json + "
        "diffusion_pytorch_model.safetensors, e.g. the vae/ folder of stable-diffusion-v1-5; or "
        "vae-ft-mse-840000-ema-pruned.safetensors)"
    )
    if cfg.vae.pretrained is None and stage == "vae" and cfg.vae.train_decoder_only:
        raise ConfigError(
            "train-vae: vae.train_decoder_only fine-tunes the decoder of a pretrained VAE, but no "
            f"VAE weights were given (vae.pretrained is empty), so the frozen encoder would be "
            f"random. Give --vae PATH: {vae_files}; {WHERE}. Or --set "
            f"vae.train_decoder_only=false to train a whole VAE from scratch, or {OPT_OUT}"
        )
    if cfg.vae.pretrained is None and stage == "autoencoder":
        raise ConfigError(
            "train-autoencoder: no VAE weights (vae.pretrained is empty), so the frozen KL-VAE "
            f"would be random and its latents noise. Give --vae PATH: {vae_files}, or an mmldm "
            f"train-vae run; {WHERE}. Or {OPT_OUT}"
        )
    if stage == "autoencoder" and not cfg.decoder.pretrained_unet and sd_unet_layout(cfg.decoder):
        raise ConfigError(
            "train-autoencoder: no decoder UNet weights (decoder.pretrained_unet is empty) for a "
            "signal decoder in Stable Diffusion 1.x's layout (860M parameters), which the paper "
            "fine-tunes from SD's UNet. Give --unet PATH: the unet/ folder of a Stable Diffusion "
            f"1.x download (config.json + diffusion_pytorch_model.safetensors); {WHERE}. "
            f"Or {OPT_OUT}"
        )
