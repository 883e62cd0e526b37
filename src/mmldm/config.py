"""Typed configuration: one dataclass per component, YAML presets, dotted overrides.

A config is built in three layers, each validated against the dataclasses below:

    dataclass defaults  <-  YAML file (values only, no class paths)  <-  ``--set a.b=c`` overrides

An unknown key, a value of the wrong type or a value outside a field's choices raises
:class:`ConfigError` with the dotted key and where it came from (file or ``--set``).
The resolved config is stored in every run folder and inside every checkpoint, so sampling
needs nothing but the checkpoint.

Defaults are the paper's Landscape settings (docs/design.md; Sun et al. 2024, sec. 4.1) where the
paper gives them, and the authors' published configs otherwise.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mmldm.audio.mel import MelSettings
from mmldm.errors import MMLDMError


class ConfigError(MMLDMError, ValueError):
    """A config file or override is invalid; the message names the key and its source."""


def _choice(value: Any, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(choices)}")


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"config key '{prefix}.{name}' must be > 0, got {getattr(obj, name)}")


def _probability(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ConfigError(
                f"config key '{prefix}.{name}' must be in [0, 1], got {getattr(obj, name)}"
            )


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Clips and signal settings (docs/design.md §2)."""

    layout: str = "folder"  # folder: class = sub-folder | regex: class from file name | manifest
    class_regex: str | None = None  # layout=regex: pattern with a named group 'label'
    classes: list[str] = field(default_factory=list)  # fixed class order; empty: sorted names
    num_classes: int = 9  # Landscape has 9 classes; 0 = unlabelled (no class head / embedding)
    num_frames: int = 16  # F
    fps: float = 10.0
    resolution: int = 256  # frames and audio images are resolution x resolution
    resize: str = "letterbox"  # letterbox (paper) | center_crop
    hflip_prob: float = 0.5  # same flip for every frame of a clip (autoencoder training)
    clip_stride: int = 16  # frames between the starts of consecutive clips of one video
    # The mel settings (defaults: HiFi-GAN's, defined once in MelSettings); they must equal
    # the vocoder's, so audio is resampled to sample_rate (docs/design.md §8.5)
    sample_rate: int = MelSettings.sample_rate
    n_fft: int = MelSettings.n_fft
    hop_length: int = MelSettings.hop_length
    win_length: int = MelSettings.win_length
    n_mels: int = MelSettings.n_mels
    fmin: float = MelSettings.fmin
    fmax: float = MelSettings.fmax
    num_workers: int = 4

    def __post_init__(self) -> None:
        _choice(self.layout, ("folder", "regex", "manifest"), "data.layout")
        _choice(self.resize, ("letterbox", "center_crop"), "data.resize")
        if self.layout == "regex" and not self.class_regex:
            raise ConfigError("config key 'data.class_regex' is required when data.layout=regex")
        _positive(self, "data", "num_frames", "fps", "resolution", "clip_stride", "sample_rate")
        _positive(self, "data", "n_fft", "hop_length", "win_length", "n_mels")
        _probability(self, "data", "hflip_prob")
        if self.num_classes < 0:
            raise ConfigError(f"config key 'data.num_classes' must be >= 0, got {self.num_classes}")
        if self.fmax > self.sample_rate / 2:
            raise ConfigError(
                f"config key 'data.fmax' ({self.fmax}) is above the Nyquist frequency "
                f"of data.sample_rate ({self.sample_rate})"
            )

    @property
    def clip_seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def clip_samples(self) -> int:
        """Audio samples of one clip."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def mel(self) -> MelSettings:
        """The STFT / mel settings of the audio, as the mel and the vocoder take them."""
        return MelSettings(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(MelSettings)}
        )


@dataclass
class VocoderConfig:
    """Mel -> waveform. HiFi-GAN weights from a local path, else Griffin-Lim (with a warning)."""

    path: str | None = None  # HiFi-GAN release: a folder with config.json + generator, or the
    #                          generator file with config.json beside it
    griffin_lim_iters: int = 64  # fallback when no weights are given

    def __post_init__(self) -> None:
        _positive(self, "vocoder", "griffin_lim_iters")


@dataclass
class VAEConfig:
    """Stage 0: the KL-VAE (diffusers AutoencoderKL; Stable Diffusion's f=8 VAE in the paper)."""

    pretrained: str | None = None  # local diffusers folder or single .safetensors / .ckpt file
    scaling_factor: float = 0.18215
    latent_channels: int = 4
    # Architecture of a VAE trained from scratch (and of the SD VAE: 128-256-512-512, 2 blocks).
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    train_decoder_only: bool = True  # fine-tune the decoder with the encoder frozen (paper)
    kl_weight: float = 1e-6
    disc_weight: float = 0.0  # optional patch discriminator; 0 disables it

    def __post_init__(self) -> None:
        _positive(self, "vae", "scaling_factor", "latent_channels", "layers_per_block")
        if not self.block_out_channels:
            raise ConfigError("config key 'vae.block_out_channels' must not be empty")

    @property
    def downsample(self) -> int:
        """Spatial factor f of the VAE (8 for Stable Diffusion's)."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class AutoencoderConfig:
    """Stage 1: encoders, projectors, heads and loss weights (docs/design.md §4)."""

    latent_channels: int = 16  # C of z_v and z_a
    key_frames: list[int] = field(default_factory=lambda: [0, 5, 10, 15])  # frames encoded
    # How z_v holds time. 0 (paper): all of z_v is read at the encoder's content slot, and the
    # decoder must find frame i in it from the index alone. N > 0: the last K * N channels of
    # z_v are N per key frame, each group read at that frame's slot (after temporal attention),
    # and the decoder of frame i is also given the group of its key frame (interpolated between
    # the two around it), so where the object is in frame i cannot be lost; the first
    # C - K * N channels stay the clip's (read at the content slot: what does not change).
    frame_channels: int = 0
    video_widths: list[int] = field(default_factory=lambda: [320, 640])  # f_v = 2
    audio_widths: list[int] = field(default_factory=lambda: [320, 640, 1280])  # f_a = 4
    num_res_blocks: int = 2
    head_channels: int = 64
    semantic_dim: int = 768  # channels of s_v and s_a
    semantic_size: int = 2  # s_v, s_a are semantic_dim x semantic_size x semantic_size
    projector_width: int = 128
    video_projector_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    audio_projector_mults: list[int] = field(default_factory=lambda: [1, 2, 4])
    video_projector_blocks: int = 3
    audio_projector_blocks: int = 4
    projector_head_channels: int = 32
    detach_projector_input: bool = True  # published code: semantic losses do not train encoders
    contrastive_dim: int = 256
    temperature_init: float = 0.07
    cond_drop_prob: float = 0.1  # per modality, for classifier-free guidance when decoding
    target_frames: int = 2  # frames decoded per clip and step while training
    # Loss weights, eq. 3. 0 switches a term (and its head / discriminator) off.
    cl_weight: float = 0.1
    co_weight: float = 0.1
    kl_weight: float = 1e-9  # 1e-9 Landscape, 1e-8 AIST++
    gan_weight: float = 0.1

    def __post_init__(self) -> None:
        _positive(self, "autoencoder", "latent_channels", "num_res_blocks", "head_channels")
        _positive(self, "autoencoder", "semantic_dim", "semantic_size", "projector_width")
        _positive(self, "autoencoder", "contrastive_dim", "temperature_init", "target_frames")
        _probability(self, "autoencoder", "cond_drop_prob")
        for name in ("cl_weight", "co_weight", "kl_weight", "gan_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key 'autoencoder.{name}' must be >= 0")
        if not self.key_frames or sorted(set(self.key_frames)) != list(self.key_frames):
            raise ConfigError("config key 'autoencoder.key_frames' must be increasing and unique")
        if not 0 <= len(self.key_frames) * self.frame_channels <= self.latent_channels:
            raise ConfigError(
                f"config key 'autoencoder.frame_channels' ({self.frame_channels}) x "
                f"{len(self.key_frames)} key frames must be within 0..latent_channels "
                f"({self.latent_channels})"
            )

    @property
    def clip_channels(self) -> int:
        """Channels of z_v read at the content slot (all of them in the paper)."""
        return self.latent_channels - len(self.key_frames) * self.frame_channels

    @property
    def video_downsample(self) -> int:
        return 2 ** (len(self.video_widths) - 1)

    @property
    def audio_downsample(self) -> int:
        return 2 ** (len(self.audio_widths) - 1)


@dataclass
class DecoderConfig:
    """The shared diffusion signal decoder (Stable Diffusion 1.x UNet layout)."""

    pretrained_unet: str | None = None  # local diffusers folder of an SD 1.x UNet
    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    layers_per_block: int = 2
    attention_heads: int = 8
    cross_attention_dim: int = 768
    # learnable modality tokens in the cross-attention context; 0 is the ablation without
    # modality embeddings (paper Table 5)
    num_modality_tokens: int = 1
    shared: bool = True  # ablation: one decoder for both modalities (paper) or one each
    content_feature: bool = True  # ablation switch: pooled z added to the time embedding
    # The class embedding in the cross-attention context (paper; given by the classification
    # head at generation time). Without it the decoder must take class from its own z and the
    # other modality's semantic feature s: in a2v / v2a that s comes from the given clip, so a
    # misjudged class of a generated pair cannot recolour (or re-pitch) the output.
    class_embedding: bool = True
    frame_index_scale: float = 1000.0  # index / F scaled before its sinusoid (docs/design.md §8.4)

    def __post_init__(self) -> None:
        _positive(self, "decoder", "layers_per_block", "attention_heads", "cross_attention_dim")
        if not self.block_out_channels:
            raise ConfigError("config key 'decoder.block_out_channels' must not be empty")
        if self.num_modality_tokens < 0:
            raise ConfigError("config key 'decoder.num_modality_tokens' must be >= 0")


@dataclass
class DiscriminatorConfig:
    """Triplet discriminator <audio image, frame i, frame j> (used when gan_weight > 0)."""

    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 4, 6, 6])
    num_res_blocks: int = 1
    head_channels: int = 32
    attention_resolutions: list[int] = field(default_factory=lambda: [32])
    start_step: int = 0  # adversarial loss switched on from this autoencoder step

    def __post_init__(self) -> None:
        _positive(self, "discriminator", "base_channels", "num_res_blocks", "head_channels")
        if not self.channel_mults:
            raise ConfigError("config key 'discriminator.channel_mults' must not be empty")


# Named DiT sizes: (width, depth, heads). S / B / L match the parameter counts of the paper's
# Table 4 (131M, 384M, 1543M) within 5%; XL is the published configs' DiT-XL/1.
DIT_SIZES = {
    "S": (768, 12, 12),
    "B": (1024, 20, 16),
    "L": (1536, 36, 24),
    "XL": (1152, 28, 16),
}


@dataclass
class DiTConfig:
    """Stage 2: the multi-modal DiT (docs/design.md §5). Published size: DiT-XL/1."""

    # S | B | L | XL: names hidden_size, depth and num_heads (DIT_SIZES). Of a size and the
    # dimensions, the later layer (defaults < file < each --set) wins: a size replaces the
    # dimensions, a dimension unsets the size; one layer giving both must agree. Without a
    # size, the dimensions not given are DiT-XL's.
    size: str | None = None
    hidden_size: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    patch_size: int = 1
    # Learned constant tokens in front of the sequence (the published configs prepend 77;
    # its AudioSet variant puts text tokens there). Constants, not a condition: nothing to drop.
    num_context_tokens: int = 0
    a2v_prob: float = 0.05  # share of training samples given z_a (audio-to-video)
    v2a_prob: float = 0.05  # share given z_v (video-to-audio); exclusive with a2v
    class_conditional: bool = False  # our extension: a label embedding with its own dropout
    class_drop_prob: float = 0.1
    # one token per key frame for z_v's frame groups (autoencoder.frame_channels > 0), besides
    # the spatial tokens of its clip channels: attention between frames and with the audio
    frame_tokens: bool = False
    long: bool = False  # second branch reading the previous clip (long / continuation)
    long_depth: int = 0  # depth of that branch; 0 = depth // 2
    prev_video_drop_prob: float = 0.2
    prev_audio_drop_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.size is not None:
            _choice(self.size, tuple(DIT_SIZES), "dit.size")
        named = DIT_SIZES[self.size or "XL"]
        for key, value in zip(DIT_DIMENSIONS, named, strict=True):
            given = getattr(self, key)
            if self.size is not None and given is not None and given != value:
                raise ConfigError(
                    f"config key 'dit.{key}' ({given}) contradicts dit.size={self.size} "
                    f"({key} {value}): give a size or the dimensions"
                )
            setattr(self, key, value if given is None else given)
        _positive(self, "dit", "hidden_size", "depth", "num_heads", "mlp_ratio", "patch_size")
        _probability(self, "dit", "a2v_prob", "v2a_prob", "class_drop_prob")
        _probability(self, "dit", "prev_video_drop_prob", "prev_audio_drop_prob")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"config key 'dit.hidden_size' ({self.hidden_size}) must be divisible by "
                f"dit.num_heads ({self.num_heads})"
            )
        if self.a2v_prob + self.v2a_prob > 1.0:
            raise ConfigError("config keys 'dit.a2v_prob' + 'dit.v2a_prob' must not exceed 1")
        if self.num_context_tokens < 0 or self.long_depth < 0:
            raise ConfigError("config keys 'dit.num_context_tokens', 'dit.long_depth' must be >= 0")


@dataclass
class DiffusionConfig:
    """Noise schedule shared by the signal decoder and the DiT (Stable Diffusion's)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # scaled_linear | linear
    beta_start: float = 0.00085
    beta_end: float = 0.012
    # what the networks output: "epsilon" (the paper) or "v_prediction" (v = sqrt(abar) eps -
    # sqrt(1 - abar) x0, Salimans & Ho 2022), which weighs the high-noise steps more: there a
    # small model learns faster what one modality says about the other
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        _choice(self.beta_schedule, ("scaled_linear", "linear"), "diffusion.beta_schedule")
        _choice(self.prediction_type, ("epsilon", "v_prediction"), "diffusion.prediction_type")
        _positive(self, "diffusion", "num_train_timesteps", "beta_start", "beta_end")
        if not self.beta_start < self.beta_end < 1:
            raise ConfigError("config keys 'diffusion.beta_start' < 'diffusion.beta_end' < 1")


@dataclass
class StageTrainConfig:
    """Optimisation settings of one training stage."""

    batch_size: int = 8  # per process
    lr: float = 1e-4
    max_steps: int = 10000
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant (published) | cosine (decays to min_lr_ratio * lr)
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    grad_accum: int = 1
    ema_decay: float = 0.0  # 0 keeps no EMA weights; reached after a warm-up (ema_decay_at)

    def _validate(self, prefix: str) -> None:
        _positive(self, prefix, "batch_size", "lr", "max_steps", "grad_accum")
        _choice(self.lr_schedule, ("constant", "cosine"), f"{prefix}.lr_schedule")
        _probability(self, prefix, "min_lr_ratio")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(f"config keys '{prefix}.warmup_steps/weight_decay/grad_clip' >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"config key '{prefix}.betas' must be two values in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"config key '{prefix}.ema_decay' must be in [0, 1)")


@dataclass
class TrainConfig:
    """Training loop settings; one StageTrainConfig per trained stage."""

    seed: int = 0
    # auto: the launcher's (accelerate launch --mixed_precision), else bf16 on GPU and fp32 on
    # CPU | no | bf16 | fp16 (wins over the launcher's, with a warning)
    mixed_precision: str = "auto"
    # experiment trackers through accelerate: tensorboard, wandb, mlflow, comet_ml, aim,
    # dvclive, ... ([] for none); metrics.jsonl and loss.png are always written
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])
    gradient_checkpointing: bool = False  # the DiT's blocks and the decoder UNet's
    # train-vae / train-autoencoder refuse to start on a random frozen VAE or an SD-sized decoder
    # UNet without its weights unless this says random weights are meant (train/starting_weights)
    allow_random_init: bool = False
    # autoencoder training: keep the frozen VAE's posteriors of each clip in memory after its
    # first encoding (the VAE encode is a quarter of a demo step); for datasets that fit in RAM
    cache_vae_latents: bool = False
    log_every: int = 10
    checkpoint_every: int = 1000
    sample_every: int = 2000
    keep_last: int = 3  # checkpoints kept per run; 0 keeps all
    vae: StageTrainConfig = field(
        default_factory=lambda: StageTrainConfig(batch_size=8, lr=4.5e-6, max_steps=20000)
    )
    # Published: lr 1e-4, batch 20 per GPU on 8 GPUs, 30 epochs (~24K steps on AIST++).
    autoencoder: StageTrainConfig = field(
        default_factory=lambda: StageTrainConfig(batch_size=20, lr=1e-4, max_steps=24000)
    )
    # Published: lr 1e-5, batch 28 per GPU on 8 GPUs.
    generator: StageTrainConfig = field(
        default_factory=lambda: StageTrainConfig(
            batch_size=28, lr=1e-5, max_steps=200000, ema_decay=0.9999
        )
    )
    # Beyond the paper: the few-step signal decoder fine-tuned from stage 1's (DistillConfig).
    distill: StageTrainConfig = field(
        default_factory=lambda: StageTrainConfig(batch_size=8, lr=1e-5, max_steps=5000)
    )

    def __post_init__(self) -> None:
        if self.mixed_precision in ("False", "false"):  # YAML reads an unquoted `no` as false
            self.mixed_precision = "no"
        _choice(self.mixed_precision, ("auto", "no", "bf16", "fp16"), "train.mixed_precision")
        _positive(self, "train", "log_every", "checkpoint_every", "sample_every")
        if self.keep_last < 0:
            raise ConfigError("config key 'train.keep_last' must be >= 0")
        for stage in ("vae", "autoencoder", "generator", "distill"):
            getattr(self, stage)._validate(f"train.{stage}")


@dataclass
class SampleConfig:
    """Sampling settings: DiT sampler and the signal decoder's sampler."""

    sampler: str = "ddim"  # ddim | dpm (diffusers' DPM-Solver++, fewer steps)
    steps: int = 50
    eta: float = 0.0
    # Guidance scale phi of eq. 9 for the conditioned modality's output (1 = no guidance).
    guidance_video: float = 1.0
    guidance_audio: float = 1.0
    # ddim | dpm | few_step (x_0 at trailing timesteps, for a distilled decoder: DistillConfig)
    decoder_sampler: str = "ddim"
    decoder_steps: int = 50
    decoder_guidance_video: float = 2.5  # classifier-free guidance of the signal decoder
    decoder_guidance_audio: float = 2.5
    # the same starting noise for every frame of a clip (frames then differ only where their
    # conditions do: no flicker of what the latent leaves open); False draws one per frame
    decoder_shared_noise: bool = False
    batch_size: int = 8
    long_clips: int = 4  # clips of a long sounding video: the first + 3 continuations = 64 frames
    seed: int = 0

    def __post_init__(self) -> None:
        _choice(self.sampler, ("ddim", "dpm"), "sample.sampler")
        _choice(self.decoder_sampler, ("ddim", "dpm", "few_step"), "sample.decoder_sampler")
        _positive(self, "sample", "steps", "decoder_steps", "batch_size", "long_clips")
        if self.eta < 0:
            raise ConfigError("config key 'sample.eta' must be >= 0")


@dataclass
class DistillConfig:
    """The few-step signal decoder (``mmldm distill-decoder``, docs/fast_decoding.md; beyond
    the paper, whose decoder takes 50 guided DDIM steps).

    The student starts as a copy of the trained decoder and is trained THROUGH its own sampler:
    ``steps`` x_0 predictions at trailing timesteps (T-1 first: from pure noise), each followed
    by a deterministic DDIM move to the next, with one pass per step and no guidance. Its last
    x_0 is regressed on the target: the guided teacher's sample from the same noise
    (``teacher``, Luhman & Luhman 2021) or the clip's own VAE latents (``data``: a sharper
    round trip, but on the demo's second family it lost the guided decoder's audio-video timing
    of generated latents; docs/fast_decoding.md).
    """

    steps: int = 4  # student sampling steps K: K UNet passes per latent instead of 2 x 50
    target: str = "teacher"  # teacher | data
    teacher_steps: int = 50  # target=teacher: the teacher's DDIM steps and guidance
    teacher_guidance: float = 2.5
    target_frames: int = 2  # frames decoded per clip and training step, with the audio image
    # `mmldm distill-vae`: a TinyVAEDecoder (TAESD's architecture) in place of the KL-VAE's
    # decoder, trained to reproduce its images; width and blocks per upsampling level
    vae_width: int = 64
    vae_depth: int = 3

    def __post_init__(self) -> None:
        _choice(self.target, ("data", "teacher"), "distill.target")
        _positive(self, "distill", "steps", "teacher_steps", "target_frames")
        _positive(self, "distill", "vae_width", "vae_depth")


@dataclass
class Config:
    """The whole resolved configuration of a run."""

    name: str = "paper_landscape"
    data: DataConfig = field(default_factory=DataConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        data, ae = self.data, self.autoencoder
        if self.distill.target_frames > data.num_frames:
            raise ConfigError("config key 'distill.target_frames' exceeds data.num_frames")
        if max(ae.key_frames) >= data.num_frames:
            raise ConfigError(
                f"config key 'autoencoder.key_frames' {ae.key_frames} indexes past "
                f"data.num_frames={data.num_frames}"
            )
        if ae.target_frames > data.num_frames:
            raise ConfigError("config key 'autoencoder.target_frames' exceeds data.num_frames")
        if ae.gan_weight > 0 and ae.target_frames < 2:
            raise ConfigError(
                "config key 'autoencoder.target_frames' must be >= 2 with the adversarial loss "
                "(autoencoder.gan_weight > 0): the discriminator judges frame pairs"
            )
        if self.dit.frame_tokens and not ae.frame_channels:
            raise ConfigError(
                "config key 'dit.frame_tokens' needs autoencoder.frame_channels > 0 (z_v's "
                "channel groups per key frame are what the frame tokens hold)"
            )
        factor = self.vae.downsample * max(ae.video_downsample, ae.audio_downsample)
        if data.resolution % factor:
            raise ConfigError(
                f"config key 'data.resolution' ({data.resolution}) must be divisible by {factor} "
                "(VAE factor x the encoders' downsampling)"
            )

    # Shapes derived from the config (docs/design.md §1).
    @property
    def vae_latent_size(self) -> int:
        return self.data.resolution // self.vae.downsample

    @property
    def video_latent_shape(self) -> tuple[int, int, int]:
        """Shape of z_v: C x H_v x W_v (16 x 16 x 16 in the paper)."""
        s = self.vae_latent_size // self.autoencoder.video_downsample
        return (self.autoencoder.latent_channels, s, s)

    @property
    def audio_latent_shape(self) -> tuple[int, int, int]:
        """Shape of z_a: C x H_a x W_a (16 x 8 x 8 in the paper)."""
        s = self.vae_latent_size // self.autoencoder.audio_downsample
        return (self.autoencoder.latent_channels, s, s)

    @property
    def semantic_shape(self) -> tuple[int, int, int]:
        """Shape of s_v and s_a (768 x 2 x 2 in the paper)."""
        ae = self.autoencoder
        return (ae.semantic_dim, ae.semantic_size, ae.semantic_size)


# --------------------------------------------------------------------------------------------
# Loading, merging, saving
# --------------------------------------------------------------------------------------------


# Keys that older versions had: a config that sets one gets this reason; a config stored in an
# older checkpoint is migrated by _migrate.
RETIRED_KEYS = {
    "dit.context_drop_prob": "it was never used (the context tokens are learned constants, "
    "not a condition that could be dropped)",
    "decoder.modality_embedding": "use decoder.num_modality_tokens: 0 for the ablation "
    "without modality embeddings",
}


def _migrate(values: dict[str, Any]) -> dict[str, Any]:
    """A stored config of an older version with its retired keys translated or dropped."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    decoder, dit = values.get("decoder", {}), values.get("dit", {})
    if decoder.pop("modality_embedding", True) is False:
        decoder["num_modality_tokens"] = 0
    dit.pop("context_drop_prob", None)
    return values


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            key = f"{prefix}{f.name}"
            keys.append(key)
            keys.extend(_all_keys(getattr(node, f.name), key + "."))
    return keys


def _translate(err: OmegaConfBaseException, source: str, key: str | None = None) -> ConfigError:
    """Turn an OmegaConf error into one line that names the dotted key and the source."""
    key = getattr(err, "full_key", None) or key or "?"
    if isinstance(err, ConfigKeyError):
        if key in RETIRED_KEYS:
            return ConfigError(f"config key '{key}' in {source} was removed: {RETIRED_KEYS[key]}")
        hint = difflib.get_close_matches(key, _all_keys(Config()), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return ConfigError(f"unknown config key '{key}' in {source}{suggestion}")
    if isinstance(err, ValidationError):
        reason = str(err).splitlines()[0]
        return ConfigError(f"config key '{key}' in {source}: {reason}")
    return ConfigError(f"{source}: {str(err).splitlines()[0]}")


DIT_DIMENSIONS = ("hidden_size", "depth", "num_heads")


def _merge(base: DictConfig, update: Any, source: str, key: str | None = None) -> DictConfig:
    dit = update.get("dit") if isinstance(update, DictConfig) else None
    if isinstance(dit, DictConfig):  # the later layer's word on the DiT's size wins
        base = base.copy()
        if dit.get("size") is not None:  # a size: the dimensions it names (or agreeing ones)
            for name in DIT_DIMENSIONS:
                base.dit[name] = None
        elif any(name in dit for name in DIT_DIMENSIONS):  # dimensions: no longer that size
            base.dit.size = None
    try:
        return OmegaConf.merge(base, update)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _translate(err, source, key) from None


def _to_object(node: DictConfig, source: str) -> Config:
    try:
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except ConfigError as err:  # raised by a __post_init__
        raise ConfigError(f"{err} ({source})") from None
    except OmegaConfBaseException as err:
        raise _translate(err, source) from None


def _defaults() -> DictConfig:
    """The dataclass defaults as a node, with the DiT's dimensions unset: ``dit.size`` fills
    them, so that a size and explicit dimensions from a file or ``--set`` can be told apart."""
    node = OmegaConf.structured(Config)
    for key in DIT_DIMENSIONS:
        node.dit[key] = None
    return node


def preset_dir() -> Path:
    """Folder of the named presets shipped with the package (``configs/`` in the repository)."""
    return Path(str(resources.files("mmldm") / "configs"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset (``tiny``, ``paper_landscape``, ...)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    # a preset name, even where a folder of that name exists (`mmldm demo --out demo`)
    preset = preset_dir() / f"{name_or_path}.yaml"
    if not preset.is_file():
        folder = " (a folder of that name exists; a config is a YAML file)" if path.is_dir() else ""
        raise ConfigError(
            f"no config file or preset named '{name_or_path}'{folder}; presets: "
            f"{', '.join(list_presets())}"
        )
    return preset


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are YAML (``3``, ``1e-4``, ``[1,2]``, ``null``)."""
    parsed = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        node = OmegaConf.from_dotlist([f"{key.strip()}={value}"])
        parsed.append((key.strip(), OmegaConf.select(node, key.strip())))
    return parsed


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated :class:`Config` from a preset name or YAML file plus dotted overrides."""
    node = _defaults()
    source = "defaults"
    if config is not None:
        path = resolve_config_path(str(config))
        source = str(path)
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors
            raise ConfigError(f"cannot parse config file {path}: {err}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        node = _merge(node, loaded, str(path))
        if "name" not in loaded:
            node.name = path.stem
    return _apply_overrides(node, overrides or [], source)


def override_config(cfg: Config, overrides: list[str], source: str = "a stored config") -> Config:
    """``cfg`` with dotted overrides applied, validated like :func:`load_config`."""
    return _apply_overrides(OmegaConf.structured(cfg), overrides, source)


# What may change in a trained model's config when it is used (sample, reconstruct,
# cache-latents): how it samples, the vocoder, data loader processes. Nothing that shapes the
# networks or the signals its latents encode.
RUNTIME_KEYS = ("sample.", "vocoder.", "data.num_workers")


def override_settings(
    cfg: Config,
    overrides: Sequence[str],
    allowed: tuple[str, ...] = RUNTIME_KEYS,
    source: str = "the checkpoint's config",
) -> Config:
    """:func:`override_config` limited to the keys under ``allowed``: a stored model's config
    keeps everything else (ConfigError naming the key otherwise)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed):
            raise ConfigError(
                f"--set {item}: a trained model keeps its architecture and data settings; only "
                f"keys under {', '.join(allowed)} may be set"
            )
    return override_config(cfg, list(overrides), source) if overrides else cfg


def _apply_overrides(node: DictConfig, overrides: list[str], source: str) -> Config:
    for item in overrides:
        ((key, value),) = parse_overrides([item])
        update = OmegaConf.create({})
        OmegaConf.update(update, key, value, force_add=True)
        node = _merge(node, update, f"--set {item}", key)
        source = f"{source} with overrides"
    return _to_object(node, source)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_from_dict(values: dict[str, Any], source: str = "a stored config") -> Config:
    """Strictly rebuild a Config from plain values (e.g. the copy stored in a checkpoint);
    keys of older versions (RETIRED_KEYS) are translated."""
    values = _migrate(values)
    node = _merge(_defaults(), OmegaConf.create(values), source)
    return _to_object(node, source)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg))
