"""The codec: signals <-> latents in both directions, for training, latent caching,
reconstruction and the pipeline.

Signals -> VAE latents (:func:`vae_inputs`: key frames, target frames and the audio image in
one VAE pass) -> (z_a, z_v) with the trained autoencoder (:meth:`Codec.encode`), and back:
(z_a, z_v) -> the signal decoder's diffusion -> VAE latents -> frames, audio image, mel and
waveform (:meth:`Codec.decode`; docs/design.md §4, "Decoding latents to signals").

Decoding runs the signal decoder's diffusion for all F frames and the audio image as ONE batch
(frame indices t / F), with classifier-free guidance per modality (2.5 in the paper), then the
VAE decoder, the inverse audio image and the vocoder. The class given to the decoder is the
classification head's prediction from (s_a, s_v), as in the paper.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor

from mmldm.audio.mel import audio_image, audio_image_to_mel
from mmldm.audio.vocoder import Vocoder, load_vocoder_from_config
from mmldm.checkpoint import (
    Checkpoint,
    check_made_from,
    checkpoint_fingerprint,
    load_checkpoint,
    read_metadata,
    resolve_checkpoint,
)
from mmldm.config import Config, VAEConfig, override_settings
from mmldm.diffusion.sampling import (
    Generators,
    ModelFn,
    few_step_sample,
    few_step_timesteps,
    guide,
    sample_loop,
)
from mmldm.diffusion.schedule import alphas_cumprod, make_sampler
from mmldm.model_folder import ModelParts, containing_model
from mmldm.models.autoencoder import MultiModalAutoencoder, MultiModalAutoencoderConfig
from mmldm.models.signal_decoder import DecoderCondition, SignalDecoder, SignalDecoderConfig
from mmldm.models.vae import TinyVAEDecoder, encode
from mmldm.models.vae import decode as vae_decode
from mmldm.networks import network_config
from mmldm.weights import CheckpointError, load_state_dict_file, load_weights

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The networks of the codec, from the experiment config
# --------------------------------------------------------------------------------------------


def decoder_config(cfg: Config) -> SignalDecoderConfig:
    d, ae = cfg.decoder, cfg.autoencoder
    # class-conditional only with a classifier: it names the class at generation time
    labelled = ae.cl_weight > 0 and d.class_embedding
    return network_config(
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
    return network_config(
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


# --------------------------------------------------------------------------------------------
# The KL-VAE: built from its config section or loaded from disk
#
# Sources ``vae.pretrained`` may name (nothing is ever downloaded):
#   - a diffusers folder (``config.json`` + weights; also a pipeline folder with ``vae/``),
#   - an original latent-diffusion / Stable Diffusion single file (``.ckpt``, ``.safetensors``,
#     full pipeline or VAE only), converted with diffusers' own key mapping,
#   - an mmldm ``train-vae`` run or checkpoint (its config holds the architecture).
# --------------------------------------------------------------------------------------------


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
    """An original LDM / SD checkpoint file (VAE only or a whole pipeline). The file is read
    here (safetensors, or ``torch.load(weights_only=True)``); its original key names are turned
    into diffusers' by diffusers' public single-file loader, given ``cfg``'s architecture."""
    try:
        sd = load_state_dict_file(path, key="state_dict")
    except CheckpointError:
        sd = load_state_dict_file(path)
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    vae = build_vae(cfg)
    if not any(k.startswith("encoder.down_blocks.") for k in sd):  # original LDM key names
        with tempfile.TemporaryDirectory() as folder:
            vae.save_config(folder)  # the architecture to convert to: no hub lookup
            try:
                converted = AutoencoderKL.from_single_file(sd, config=folder, local_files_only=True)
            except (KeyError, NotImplementedError, RuntimeError, ValueError) as err:
                raise CheckpointError(
                    f"{path}: not a complete original KL-VAE of the vae.* architecture "
                    f"({type(err).__name__}: {str(err)[:200]})"
                ) from None
        unused = len(sd) - len(converted.state_dict())
        if unused > 0:
            log.warning("%s: %d tensors of the file are not the VAE's, ignored", path, unused)
        sd = converted.state_dict()
    load_weights(vae, sd, source=str(path))
    return vae


# --------------------------------------------------------------------------------------------
# Signals -> VAE latents
# --------------------------------------------------------------------------------------------


@dataclass
class VAEInputs:
    """What the autoencoder sees of a batch of clips, in VAE latent space."""

    key_latents: torch.Tensor  # [B, K, 4, R, R]
    audio_image: torch.Tensor  # [B, 3, S, S] in [-1, 1]
    audio_latent: torch.Tensor  # [B, 4, R, R]
    target_index: torch.Tensor  # [B, n] long, increasing per clip
    target_frames: torch.Tensor  # [B, n, 3, S, S] in [-1, 1]
    target_latents: torch.Tensor  # [B, n, 4, R, R]


class VAELatentCache:
    """The frozen VAE's posterior (mean, std) of every frame and of the audio image of each
    clip seen, kept in memory, so that each epoch after the first only draws from them
    (``train.cache_vae_latents``). Keyed by (path, start, flipped); for small datasets: the
    demo's 192 clips take 7 MB, a 256^2 clip of 16 frames 0.6 MB."""

    def __init__(self, vae) -> None:
        self.vae = vae
        self.store: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def posteriors(
        self, keys: list[tuple], video: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``video [B, F, 3, S, S]``, ``image [B, 3, S, S]`` -> (mean, std) ``[B, F + 1, C, R, R]``
        (frames, then the audio image), encoding only the clips not seen before."""
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        if missing:
            b, f = len(missing), video.shape[1]
            images = torch.cat([video[missing].flatten(0, 1), image[missing]])
            dist = self.vae.encode(images.to(next(self.vae.parameters()).dtype)).latent_dist
            frames_mean, audio_mean = dist.mean.split([b * f, b])
            frames_std, audio_std = dist.std.split([b * f, b])
            mean = torch.cat([frames_mean.unflatten(0, (b, f)), audio_mean[:, None]], dim=1)
            std = torch.cat([frames_std.unflatten(0, (b, f)), audio_std[:, None]], dim=1)
            for j, i in enumerate(missing):
                self.store[keys[i]] = (mean[j], std[j])
        mean, std = zip(*(self.store[key] for key in keys), strict=True)
        return torch.stack(mean), torch.stack(std)


@torch.no_grad()
def vae_inputs(
    vae,
    cfg: Config,
    video: torch.Tensor,
    audio: torch.Tensor,
    num_targets: int,
    *,
    flip: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    cache: VAELatentCache | None = None,
    keys: list[tuple] | None = None,
    sample_vae: bool = True,
) -> VAEInputs:
    """Clips -> VAE latents of key frames, target frames and the audio image, in one VAE pass.

    Args:
        video: ``[B, F, 3, S, S]`` in [-1, 1]; audio: ``[B, N]`` in [-1, 1] at data.sample_rate.
        num_targets: frames drawn per clip for the decoder (autoencoder.target_frames while
            training; increasing per clip).
        flip: ``[B]`` bool, mirror those clips' frames (training augmentation).
        cache, keys: draw the latents from cached posteriors of the clips named by ``keys``
            ((path, start) each) instead of encoding them (:class:`VAELatentCache`).
        sample_vae: posterior samples (training, as the paper) or the posterior means.
    """
    b, f = video.shape[:2]
    if flip is not None:
        video = torch.where(flip[:, None, None, None, None], video.flip(-1), video)
    image = audio_image(audio, cfg.data).to(video.dtype)
    scores = torch.rand(b, f, generator=generator, device=video.device)
    target_index = scores.argsort(dim=1)[:, :num_targets].sort(dim=1).values  # i < j
    key_frames = cfg.autoencoder.key_frames
    targets = torch.gather(
        video, 1, target_index[:, :, None, None, None].expand(-1, -1, *video.shape[2:])
    )
    if cache is not None:
        if keys is None or len(keys) != b:
            raise ValueError("vae_inputs: a latent cache needs one key (path, start) per clip")
        flipped = [False] * b if flip is None else flip.tolist()
        names = [(*key, mirrored) for key, mirrored in zip(keys, flipped, strict=True)]
        mean, std = cache.posteriors(names, video, image)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = (mean + std * noise) * vae.config.scaling_factor  # [B, F + 1, C, R, R]: a sample
        index = target_index[:, :, None, None, None].expand(-1, -1, *z.shape[2:])
        key_lat, tgt_lat, audio_lat = z[:, key_frames], torch.gather(z, 1, index), z[:, f]
    else:
        k, n = len(key_frames), num_targets
        images = torch.cat([video[:, key_frames].flatten(0, 1), targets.flatten(0, 1), image])
        latents = encode(vae, images.to(next(vae.parameters()).dtype), sample=sample_vae)
        key_lat, tgt_lat, audio_lat = latents.split([b * k, b * n, b])
        key_lat, tgt_lat = key_lat.unflatten(0, (b, k)), tgt_lat.unflatten(0, (b, n))
    return VAEInputs(
        key_latents=key_lat,
        audio_image=image,
        audio_latent=audio_lat,
        target_index=target_index,
        target_frames=targets,
        target_latents=tgt_lat,
    )


def batch_inputs(
    batch: dict, vae, cfg: Config, num_targets: int, cache: VAELatentCache | None = None
) -> VAEInputs:
    """A training batch (``video [B, F, 3, S, S]``, ``audio [B, N]``, their paths and starts) ->
    VAE latents of key frames, ``num_targets`` random frames per clip and the audio image, each
    clip mirrored with probability ``data.hflip_prob``; from the cache's posteriors if given."""
    video = batch["video"]
    flip = torch.rand(len(video), device=video.device) < cfg.data.hflip_prob
    keys = None
    if cache is not None:
        keys = list(zip(batch["path"], batch["start"].tolist(), strict=True))
    return vae_inputs(
        vae, cfg, video, batch["audio"], num_targets, flip=flip, cache=cache, keys=keys
    )


# --------------------------------------------------------------------------------------------
# The trained autoencoder: loading, encoding, decoding
# --------------------------------------------------------------------------------------------


def with_decoder_sampling(
    cfg: Config, sampler: str, steps: int, guidance_audio: float, guidance_video: float
) -> Config:
    """``cfg`` with the signal decoder's sampling settings (``sample.decoder_*``) replaced:
    what :meth:`Codec.decode` reads from the codec's config."""
    sample = dataclasses.replace(
        cfg.sample,
        decoder_sampler=sampler,
        decoder_steps=steps,
        decoder_guidance_audio=guidance_audio,
        decoder_guidance_video=guidance_video,
    )
    return dataclasses.replace(cfg, sample=sample)


def distilled_checkpoint(path: str | Path, autoencoder: str | Path, found: str | None = None):
    """A ``distill`` checkpoint, refused unless distilled from ``autoencoder`` (whose
    fingerprint is ``found`` when already known): a distilled decoder reads the latents of that
    autoencoder's encoders and VAE."""
    ckpt = load_checkpoint(path, kind="distill")
    check_made_from(ckpt, autoencoder, found, made="distilled")
    return ckpt


def autoencoder_vae(ckpt: Checkpoint, parts: ModelParts | None) -> AutoencoderKL:
    """The KL-VAE of an autoencoder checkpoint: its own weights (training checkpoints hold
    them), or the diffusers VAE folder beside it in its model folder (``parts``)."""
    if "vae" in ckpt.modules:
        vae = build_vae(ckpt.config.vae)
        load_weights(vae, ckpt.state_dict("vae"), source=str(ckpt.path))
        return vae
    if parts is None:
        raise CheckpointError(f"{ckpt.path}: an autoencoder checkpoint without its VAE")
    return load_vae(dataclasses.replace(ckpt.config.vae, pretrained=str(parts.vae)))


def load_distilled_decoder(
    model: MultiModalAutoencoder,
    cfg: Config,
    decoder: str | Path,
    autoencoder: str | Path,
    fingerprint: str | None = None,
) -> Config:
    """Load a distilled signal decoder of ``autoencoder`` into ``model``; returns ``cfg`` with
    the distilled decoder's sampling settings (few_step, K steps, no guidance)."""
    distilled = distilled_checkpoint(decoder, autoencoder, fingerprint)
    load_weights(model.decoder, distilled.state_dict("decoder"), source=str(decoder))
    own = distilled.config.sample
    log.info(
        "decoder %s (step %d): %s, %d steps",
        distilled.path,
        distilled.step,
        own.decoder_sampler,
        own.decoder_steps,
    )
    return with_decoder_sampling(
        cfg,
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
    fingerprint: str | None = None,
) -> TinyVAEDecoder:
    """A tiny VAE decoder (``mmldm distill-vae``) of ``autoencoder``'s VAE (whose fingerprint
    is ``fingerprint`` when already known), to decode latents with in place of the KL-VAE's
    decoder (``Codec.vae_decoder``)."""
    ckpt = distilled_checkpoint(path, autoencoder, fingerprint)
    tiny = TinyVAEDecoder(**tiny_vae_decoder_config(ckpt.config))
    load_weights(tiny, ckpt.state_dict("vae_decoder"), source=str(ckpt.path))
    log.info("VAE decoder %s (step %d)", ckpt.path, ckpt.step)
    return tiny.to(device, dtype).eval().requires_grad_(False)


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
) -> ModelFn:
    """The signal decoder as one ``model_fn(x, t)`` over B audio latents followed by B*n frame
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

    scales = (guidance_audio, guidance_video)
    cond_a, cond_v = conds(1.0)
    null_a, null_v = conds(0.0) if scales != (1.0, 1.0) else (None, None)  # unguided: no nulls

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        def inputs(ca: DecoderCondition | None, cv: DecoderCondition | None) -> tuple:
            return (x[:b], t[:b], ca, x[b:], t[b:], cv)  # audio rows, then the frames' rows

        def predict(i: tuple) -> tuple[torch.Tensor, torch.Tensor]:
            return decoder.predict_both(*i)

        return torch.cat(guide(predict, inputs(cond_a, cond_v), inputs(null_a, null_v), scales))

    return model_fn


def decoder_noise(
    cfg: Config,
    b: int,
    n: int,
    *,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Starting noise ``[B + B*n, 4, R, R]`` (audio latents, then n frames per clip): one draw
    per frame, or one per clip for all its frames with ``sample.decoder_shared_noise``. With a
    list of B generators, clip i's rows come from generator i alone."""
    latent = (cfg.vae.latent_channels, cfg.vae_latent_size, cfg.vae_latent_size)
    kw = dict(generator=generator, device=torch.device(device), dtype=dtype)
    x_a = randn_tensor((b, *latent), **kw)
    draws = 1 if cfg.sample.decoder_shared_noise else n
    x_v = randn_tensor((b, draws, *latent), **kw)
    return torch.cat([x_a, x_v.expand(-1, n, -1, -1, -1).flatten(0, 1)])


def decoder_rows(generator: Generators, n: int) -> Generators:
    """Per-clip generators -> one per row of :func:`decoder_noise`'s layout (a clip's frames
    share its generator); a single generator or None as it is."""
    if not isinstance(generator, list):
        return generator
    return [*generator, *(g for g in generator for _ in range(n))]


def run_decoder_sampler(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    cfg: Config,
    sampler: str,
    steps: int,
    *,
    generator: Generators = None,
    desc: str | None = None,
) -> torch.Tensor:
    """x_0 from ``x_T`` with ``sampler``: ddim / dpm (diffusers, :func:`sample_loop`) or
    few_step (:func:`few_step_sample`, the distilled decoder's)."""
    if sampler == "few_step":
        times = few_step_timesteps(steps, cfg.diffusion.num_train_timesteps)
        abar = alphas_cumprod(cfg.diffusion)
        return few_step_sample(model_fn, x_T, times, abar, cfg.diffusion.prediction_type)
    scheduler = make_sampler(cfg.diffusion, sampler)
    return sample_loop(
        model_fn, x_T, scheduler, steps, eta=cfg.sample.eta, generator=generator, desc=desc
    )


@dataclass
class DecodedClips:
    frames: torch.Tensor  # [B, F, 3, S, S] in [-1, 1]
    audio_image: torch.Tensor  # [B, 3, S, S] in [-1, 1]
    mel: torch.Tensor  # [B, n_mels, T] natural-log mel
    wave: torch.Tensor  # [B, N] in [-1, 1]
    sample_rate: int


# --------------------------------------------------------------------------------------------
# The codec of a trained autoencoder
# --------------------------------------------------------------------------------------------


@dataclass
class Codec:
    """Signals <-> latents with a trained autoencoder.

    ``cfg`` is the autoencoder's config: its data settings, its diffusion schedule and the
    signal decoder's sampling settings (``sample.decoder_*``: the paper's 50 guided DDIM steps,
    or a distilled decoder's few steps). The KL-VAE encodes; ``vae_decoder`` (a tiny VAE
    decoder), when given, decodes in its place.
    """

    cfg: Config
    autoencoder: MultiModalAutoencoder
    vae: torch.nn.Module
    vae_decoder: torch.nn.Module | None = None
    vocoder: Vocoder | None = None  # None: loaded by get_vocoder() when first needed

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        decoder: str | Path | None = None,
        vae_decoder: str | Path | None = None,
        vocoder: str | Path | None = None,
        folder_decoders: bool = True,
        overrides: Sequence[str] = (),
    ) -> Codec:
        """The codec of an autoencoder run, checkpoint folder or weights file, or of a model
        folder (``mmldm export``; its vocoder and distilled decoders too, unless given).

        Args:
            decoder: a distilled signal decoder of this autoencoder (``mmldm distill-decoder``
                run or checkpoint) to decode with; its sampling settings (few_step, K steps, no
                guidance) replace ``sample.decoder_*``.
            vae_decoder: a tiny VAE decoder of its VAE (``mmldm distill-vae``).
            vocoder: a HiFi-GAN folder instead of ``vocoder.path`` (loaded now; without it the
                vocoder is loaded when first needed).
            folder_decoders: False: a model folder's distilled decoders are not loaded (its
                autoencoder's own decoder and the KL-VAE's decode, e.g. as a teacher).
            overrides: ``KEY=VALUE`` settings of its config to change (``sample.*``,
                ``vocoder.*``, ``data.num_workers``: :func:`mmldm.config.override_settings`),
                applied last, so over a distilled decoder's sampling settings too.
        """
        parts = containing_model(path)
        if parts is not None:  # its autoencoder, with its vocoder and distilled parts
            path = parts.autoencoder
            if folder_decoders:
                decoder, vae_decoder = decoder or parts.decoder, vae_decoder or parts.vae_decoder
        ckpt = load_checkpoint(path, kind="autoencoder")
        cfg = ckpt.config
        model = MultiModalAutoencoder(autoencoder_config(cfg))
        load_weights(model, ckpt.state_dict("autoencoder"), source=str(ckpt.path))
        vae = autoencoder_vae(ckpt, parts)
        # the distilled parts must come from this autoencoder: its fingerprint, read once
        fingerprint = checkpoint_fingerprint(path) if decoder or vae_decoder else None
        if decoder is not None:
            cfg = load_distilled_decoder(model, cfg, decoder, path, fingerprint)
        cfg = override_settings(cfg, overrides, source=f"the config of {ckpt.path}")
        if parts is not None and vocoder is None and cfg.vocoder.path == ckpt.config.vocoder.path:
            vocoder = parts.vocoder  # the folder's, unless --set vocoder.path named another
        for module in (model, vae):
            module.to(device).eval().requires_grad_(False)
            if dtype != torch.float32:
                module.to(dtype)
        tiny = None
        if vae_decoder is not None:
            tiny = load_vae_decoder(vae_decoder, path, device, dtype, fingerprint)
        codec = cls(cfg, model, vae, tiny)
        if vocoder:
            codec.vocoder = codec.load_vocoder(str(vocoder))
        return codec

    def load_vocoder(self, path: str | None = None) -> Vocoder:
        """HiFi-GAN from ``path`` (default ``cfg.vocoder.path``), Griffin-Lim without one."""
        voc = load_vocoder_from_config(self.cfg, path)
        return voc.to(next(self.autoencoder.parameters()).device)

    def get_vocoder(self) -> Vocoder:
        """The vocoder, loaded from ``cfg.vocoder.path`` at the first call if none was given."""
        if self.vocoder is None:
            self.vocoder = self.load_vocoder()
        return self.vocoder

    @property
    def decoding_vae(self) -> torch.nn.Module:
        """What decodes VAE latents to pixels: the tiny VAE decoder if given, else the KL-VAE."""
        return self.vae if self.vae_decoder is None else self.vae_decoder

    def with_decoding(
        self, sampler: str, steps: int, guidance_audio: float, guidance_video: float
    ) -> Codec:
        """The same codec decoding with other sampling settings (the modules are shared)."""
        cfg = with_decoder_sampling(self.cfg, sampler, steps, guidance_audio, guidance_video)
        return dataclasses.replace(self, cfg=cfg, vocoder=self.get_vocoder())

    # -- signals -> latents ------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, audio: torch.Tensor, sample: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``video [B, F, 3, S, S]`` in [-1, 1], ``audio [B, N]`` at data.sample_rate ->
        (z_a, z_v); the VAE's and the autoencoder's posterior means (unless ``sample``), so a
        clip encodes the same way every time, in any batch and on any process (the latent
        cache, reconstructions, and the conditions of :meth:`encode_audio` alike)."""
        inputs = vae_inputs(self.vae, self.cfg, video, audio, num_targets=0, sample_vae=sample)
        enc = self.autoencoder.encode(inputs.key_latents, inputs.audio_latent, sample=sample)
        return enc.z_a, enc.z_v

    @torch.no_grad()
    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, N]`` -> z_a (posterior mean), without any video."""
        image = audio_image(audio, self.cfg.data)
        # the VAE's posterior mean too: a given clip encodes the same way every time
        latent = encode(self.vae, image.to(next(self.vae.parameters()).dtype), sample=False)
        return self.autoencoder.audio_encoder(latent).mean

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, F, 3, S, S]`` in [-1, 1] -> z_v (posterior mean), without any audio."""
        key = video[:, self.cfg.autoencoder.key_frames]  # [B, K, 3, S, S]
        dtype = next(self.vae.parameters()).dtype
        latents = encode(self.vae, key.flatten(0, 1).to(dtype), sample=False)
        return self.autoencoder.video_encoder(latents.unflatten(0, key.shape[:2])).mean

    # -- latents -> signals ------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        z_a: torch.Tensor,
        z_v: torch.Tensor,
        *,
        labels: torch.Tensor | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_audio: float | None = None,
        guidance_video: float | None = None,
        generator: Generators = None,
        vae_batch: int = 32,
        desc: str | None = None,
    ) -> DecodedClips:
        """(z_a ``[B, C, h_a, w_a]``, z_v ``[B, C, h_v, w_v]``) -> frames, audio image, mel,
        waveform. Settings not given come from ``cfg.sample.decoder_*``; ``labels`` (the
        decoder's class) from the classification head when not given, as in the paper."""
        cfg, model = self.cfg, self.autoencoder
        sc = cfg.sample
        steps = steps or sc.decoder_steps
        g_a = sc.decoder_guidance_audio if guidance_audio is None else guidance_audio
        g_v = sc.decoder_guidance_video if guidance_video is None else guidance_video
        b, f = len(z_a), cfg.data.num_frames
        s_a, s_v = model.semantics(z_a, z_v)
        if labels is None:
            labels = model.predict_class(s_a, s_v)
        frame_index = torch.arange(f, device=z_a.device).repeat(b, 1)  # [B, F]: every frame
        model_fn = decoder_denoiser(
            model.decoder, cfg, z_a, z_v, s_a, s_v, labels, frame_index, g_a, g_v
        )
        x_T = decoder_noise(cfg, b, f, generator=generator, device=z_a.device, dtype=z_a.dtype)
        sampler = sampler or sc.decoder_sampler
        rows = decoder_rows(generator, f)
        x0 = run_decoder_sampler(model_fn, x_T, cfg, sampler, steps, generator=rows, desc=desc)
        vae = self.decoding_vae
        images = torch.cat([vae_decode(vae, chunk) for chunk in x0.split(vae_batch)]).clamp(-1, 1)
        image, frames = images[:b], images[b:].unflatten(0, (b, f))
        mel_settings = cfg.data.mel
        n = cfg.data.clip_samples
        mel = audio_image_to_mel(image.float(), mel_settings.n_mels, mel_settings.num_frames(n))
        wave = self.get_vocoder()(mel)
        wave = F.pad(wave, (0, max(0, n - wave.shape[-1])))[:, :n]
        return DecodedClips(frames.float(), image.float(), mel, wave, cfg.data.sample_rate)
