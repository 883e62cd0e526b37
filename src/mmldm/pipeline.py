"""The MM-LDM pipeline: generator (DiT) + autoencoder + VAE + vocoder, every generation task.

    pipe = MMLDMPipeline.from_pretrained("runs/generator", "runs/autoencoder", device="cuda")
    out = pipe.generate("svg", num=4, seed=0)        # frames [4, F, 3, S, S] in [-1, 1], wave
    pipe.save(out, "samples/")                       # one mp4 per sample, a contact sheet, JSON

Tasks: ``svg`` (sounding video), ``a2v`` / ``v2a`` (the other modality from a given audio / video,
guidance of the paper's eq. 9), ``audio`` / ``video`` (one modality of a joint sample), ``long``
(K clips, each conditioned on the previous one), ``audio-continuation`` / ``video-continuation``
(a given clip continued by K - 1 clips).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mmldm.audio.mel import audio_image
from mmldm.checkpoint import checkpoint_fingerprint, load_checkpoint
from mmldm.codec import Codec, DecodedClips, LatentStats
from mmldm.config import Config
from mmldm.diffusion.sampling import ModelFn, guide, sample_loop
from mmldm.diffusion.schedule import add_noise, alphas_cumprod, make_sampler
from mmldm.models.dit import DiTInputs, MultiModalDiT
from mmldm.networks import dit_config
from mmldm.weights import CheckpointError, load_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """What a generation task is given and what its output shows (docs/design.md §8)."""

    given: str | None = None  # "audio" / "video": the modality of a given clip
    continued: bool = False  # K clips, each conditioned on the previous clip's latents (the
    #                          given clip, where there is one, opens the output)
    video: str = "generated"  # the video track: "generated", "given" or "audio image"
    audio: str = "generated"  # the audio track: "generated", "given" or "silent"


TASKS = {
    "svg": Task(),
    "a2v": Task(given="audio", audio="given"),  # video guided by the audio (eq. 9)
    "v2a": Task(given="video", video="given"),
    "audio": Task(video="audio image"),  # one modality of a joint sample
    "video": Task(audio="silent"),
    "long": Task(continued=True),
    "audio-continuation": Task(given="audio", continued=True, video="audio image"),
    "video-continuation": Task(given="video", continued=True, audio="silent"),
}


@dataclass
class Generation:
    """Generated sounding videos. ``frames`` and ``wave`` cover the whole output (K clips for
    long and continuation tasks); ``has_audio`` / ``has_video`` say which tracks are meant."""

    task: str
    frames: torch.Tensor  # [N, T, 3, S, S] in [-1, 1]
    wave: torch.Tensor  # [N, L] in [-1, 1]
    fps: float
    sample_rate: int
    seeds: list[int]
    settings: dict = field(default_factory=dict)
    has_audio: bool = True
    has_video: bool = True
    labels: list[int] | None = None


class MMLDMPipeline:
    """The generator (DiT and its latent statistics) and the codec of the autoencoder its
    latents came from; ``cfg`` is the generator's config (its data / autoencoder sections are
    the codec's)."""

    def __init__(self, dit: MultiModalDiT, stats: LatentStats, codec: Codec, cfg: Config) -> None:
        self.dit, self.stats, self.codec, self.cfg = dit, stats, codec, cfg
        self.abar = alphas_cumprod(cfg.diffusion)

    @classmethod
    def from_pretrained(
        cls,
        generator: str | Path,
        autoencoder: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        vocoder: str | None = None,
        decoder: str | Path | None = None,
        vae_decoder: str | Path | None = None,
        use_ema: bool = True,
        allow_foreign_autoencoder: bool = False,
    ) -> MMLDMPipeline:
        """Load a generator run / checkpoint and the autoencoder it was trained on; with
        ``decoder``, a distilled decoder of that autoencoder (``mmldm distill-decoder``) decodes
        instead of its own; with ``vae_decoder``, a tiny VAE decoder (``mmldm distill-vae``)
        replaces the KL-VAE's decoder (its encoder still encodes a2v / v2a conditions)."""
        ckpt = load_checkpoint(generator, kind="generator")
        cfg = ckpt.config
        expected = ckpt.metadata.get("mmldm.autoencoder_fingerprint")
        found = checkpoint_fingerprint(autoencoder)
        if expected and expected != found and not allow_foreign_autoencoder:
            raise CheckpointError(
                f"{ckpt.path} was trained on the latents of "
                f"{ckpt.metadata.get('mmldm.autoencoder')} (fingerprint {expected}), not on "
                f"{autoencoder} ({found})"
            )
        dit = MultiModalDiT(dit_config(cfg))
        name = "ema" if use_ema and "ema" in ckpt.modules else "dit"
        load_weights(dit, ckpt.state_dict(name), source=f"{ckpt.path} [{name}]")
        stats = LatentStats.from_state_dict(ckpt.state_dict("latent_stats"))
        codec = Codec.load(
            autoencoder,
            device=device,
            dtype=dtype,
            decoder=decoder,
            vae_decoder=vae_decoder,
            vocoder=vocoder,
        )
        codec.get_vocoder()  # now: a wrong vocoder fails here, not after sampling
        dit.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:
            dit.to(dtype)
        log.info(
            "generator %s (step %d, %s weights), autoencoder %s",
            ckpt.path,
            ckpt.step,
            name,
            autoencoder,
        )
        return cls(dit, stats, codec, cfg)

    @property
    def device(self) -> torch.device:
        return self.dit.eos_a.device

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.eos_a.dtype

    # -- latent sampling: noise, prepare, denoise, unpack ---------------------------------------

    def pack(self, z_a: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
        """``[N, *audio_latent_shape]``, ``[N, *video_latent_shape]`` -> one scheduler state
        ``[N, |z_a| + |z_v|]``."""
        return torch.cat([z_a.flatten(1), z_v.flatten(1)], dim=1)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of :meth:`pack`."""
        shape_a, shape_v = self.cfg.audio_latent_shape, self.cfg.video_latent_shape
        n_a = shape_a[0] * shape_a[1] * shape_a[2]
        return x[:, :n_a].reshape(-1, *shape_a), x[:, n_a:].reshape(-1, *shape_v)

    def noise(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal ``[num, |z_a| + |z_v|]``: the audio latents' draw, then the video's."""
        kw = dict(generator=generator, device=self.device, dtype=self.dtype)
        z_a = torch.randn((num, *self.cfg.audio_latent_shape), **kw)
        z_v = torch.randn((num, *self.cfg.video_latent_shape), **kw)
        return self.pack(z_a, z_v)

    def model_fn(
        self,
        given: DiTInputs,
        scales: tuple[float, float],
        fixed_noise: torch.Tensor,
    ) -> ModelFn:
        """The DiT as ``model_fn(x, t)`` on the packed state. ``given`` holds the conditions
        (clean ``cond_a`` / ``cond_v``, ``labels``, ``prev_a`` / ``prev_v``; its z / t are
        unused). A given modality's part of x_t is its clean latent noised to t with
        ``fixed_noise`` (sec. 3.3); with a condition, eq. 9 guides each modality against the
        null condition (zero latents, the null class) with ``scales`` (audio, video)."""
        fixed_a, fixed_v = self.unpack(fixed_noise)
        abar = self.abar.to(self.device)
        null_labels = None
        if given.labels is not None:
            null_labels = torch.full_like(given.labels, self.dit.num_classes)
        conditioned = any(c is not None for c in (given.cond_a, given.cond_v, given.labels))
        scales = scales if conditioned else (1.0, 1.0)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            z_a, z_v = self.unpack(x)
            if given.cond_a is not None:  # the given audio, noised to this step
                z_a = add_noise(given.cond_a, fixed_a, t, abar)
            if given.cond_v is not None:
                z_v = add_noise(given.cond_v, fixed_v, t, abar)
            null_a, null_v = torch.zeros_like(z_a), torch.zeros_like(z_v)  # absent = zeros
            cond = replace(
                given,
                z_a=z_a,
                z_v=z_v,
                t=t,
                cond_a=null_a if given.cond_a is None else given.cond_a,
                cond_v=null_v if given.cond_v is None else given.cond_v,
            )
            null = replace(cond, cond_a=null_a, cond_v=null_v, labels=null_labels)
            return self.pack(*guide(self.dit, cond, null, scales))

        return model_fn

    @torch.no_grad()
    def sample_latents(
        self,
        num: int,
        *,
        cond_a: torch.Tensor | None = None,
        cond_v: torch.Tensor | None = None,
        prev_a: torch.Tensor | None = None,
        prev_v: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_audio: float | None = None,
        guidance_video: float | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (z_a, z_v) ``[num, C, h, w]``. A given ``cond_a`` (a2v) / ``cond_v`` (v2a)
        is the clean latent of that modality, returned as it is; ``prev_a`` / ``prev_v`` are
        the previous clip's latents (long, continuations); ``labels`` ``[num]`` classes."""
        sc = self.cfg.sample
        scales = (
            sc.guidance_audio if guidance_audio is None else guidance_audio,
            sc.guidance_video if guidance_video is None else guidance_video,
        )
        x_T = self.noise(num, generator)  # 1. noise
        fixed_noise = self.noise(num, generator)  # the given modality's forward noise
        given = DiTInputs(None, None, None, cond_a, cond_v, labels, prev_a, prev_v)
        model_fn = self.model_fn(given, scales, fixed_noise)  # 2. prepare
        scheduler = make_sampler(self.cfg.diffusion, sampler or sc.sampler)
        x_0 = sample_loop(  # 3. denoise
            model_fn, x_T, scheduler, steps or sc.steps, eta=sc.eta, generator=generator
        )
        z_a, z_v = self.unpack(x_0)  # 4. unpack
        return (z_a if cond_a is None else cond_a), (z_v if cond_v is None else cond_v)

    # -- encode / decode -----------------------------------------------------------------------

    def encode(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None):
        """Given signals -> normalised latents (None where not given)."""
        dev, dt = self.device, self.dtype
        z_a = z_v = None
        if audio is not None:
            z_a = self.codec.encode_audio(audio.to(dev, dt))
        if video is not None:
            z_v = self.codec.encode_video(video.to(dev, dt))
        za_n, zv_n = self.stats.normalize(
            z_a if z_a is not None else torch.zeros(1, *self.cfg.audio_latent_shape),
            z_v if z_v is not None else torch.zeros(1, *self.cfg.video_latent_shape),
        )
        return (za_n if z_a is not None else None), (zv_n if z_v is not None else None)

    def decode(self, z_a: torch.Tensor, z_v: torch.Tensor, generator=None, labels=None, steps=None):
        """Normalised latents -> signals with the autoencoder's decoder settings (or a
        distilled decoder's); ``steps`` overrides sample.decoder_steps."""
        za, zv = self.stats.denormalize(z_a, z_v)
        return self.codec.decode(za, zv, labels=labels, generator=generator, steps=steps)

    # -- tasks ---------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        task: str,
        num: int = 1,
        *,
        seed: int = 0,
        audio: torch.Tensor | None = None,
        video: torch.Tensor | None = None,
        clips: int | None = None,
        labels: list[int] | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_audio: float | None = None,
        guidance_video: float | None = None,
        decoder_steps: int | None = None,
    ) -> Generation:
        """Generate ``num`` samples of ``task`` (:data:`TASKS`).

        Args:
            audio: ``[N]`` or ``[num, N]`` waveform at data.sample_rate (a2v, audio-continuation).
            video: ``[F, 3, S, S]`` or ``[num, F, 3, S, S]`` in [-1, 1] (v2a, video-continuation).
            clips: clips of a long / continued output (default sample.long_clips).
            labels: classes to generate (class-conditional generators only).
            decoder_steps: signal decoder steps (default sample.decoder_steps; a distilled
                decoder's K).
        """
        spec = TASKS.get(task)
        if spec is None:
            raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        g = torch.Generator(self.device).manual_seed(seed)
        kw = dict(
            steps=steps,
            sampler=sampler,
            guidance_audio=guidance_audio,
            guidance_video=guidance_video,
            generator=g,
        )
        y = self._labels(labels, num)
        given = self._given(task, spec, num, audio, video)  # the given clip's signals
        z_given = self.encode(**given)  # and its normalised latents (None: not given)
        num_clips = (clips or self.cfg.sample.long_clips) if spec.continued else 1
        tracks, prev = [], (None, None)
        for i in range(num_clips):
            if i == 0 and spec.continued and spec.given:  # the given clip opens the output
                z_a, z_v = z_given
                tracks.append(self._tracks(spec, given, None))
            else:  # a2v / v2a condition on the given clip, continuations on the previous one
                cond_a, cond_v = (None, None) if spec.continued else z_given
                z_a, z_v = self.sample_latents(
                    num,
                    cond_a=cond_a,
                    cond_v=cond_v,
                    prev_a=prev[0],
                    prev_v=prev[1],
                    labels=y,
                    **kw,
                )
                out = self.decode(z_a, z_v, generator=g, steps=decoder_steps)
                tracks.append(self._tracks(spec, given, out))
            # the next clip follows this one in the modalities the task generates
            prev = (None if spec.given == "video" else z_a, None if spec.given == "audio" else z_v)
        frames, wave = (torch.cat(track, 1) for track in zip(*tracks, strict=True))
        info = {**kw, "decoder_steps": decoder_steps}
        return self._result(task, frames, wave, seed, num, info, spec.audio != "silent", y)

    def _labels(self, labels: list[int] | None, num: int) -> torch.Tensor | None:
        """Classes ``[num]`` (one class for all, or one per sample), or None."""
        if labels is None:
            return None
        if not self.dit.num_classes:
            raise ValueError("this generator is not class-conditional (dit.class_conditional)")
        y = torch.tensor(labels, device=self.device)
        return y.expand(num) if len(labels) == 1 else y

    def _given(
        self,
        task: str,
        spec: Task,
        num: int,
        audio: torch.Tensor | None,
        video: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """The given clip as ``{"audio": [num, n]}`` or ``{"video": [num, F, 3, S, S]}`` (one
        clip's samples n), or ``{}`` for tasks that take none."""
        if spec.given is None:
            return {}
        signal = {"audio": audio, "video": video}[spec.given]
        if signal is None:
            raise ValueError(f"task {task} needs --{spec.given}")
        if spec.given == "audio":
            n = int(round(self.cfg.data.clip_seconds * self.cfg.data.sample_rate))
            signal = (signal if signal.dim() == 2 else signal[None])[:, :n]
        else:
            signal = signal if signal.dim() == 5 else signal[None]
        signal = signal.expand(num, *signal.shape[1:]).to(self.device)
        return {spec.given: signal}

    def _tracks(
        self, spec: Task, given: dict[str, torch.Tensor], out: DecodedClips | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One clip's (frames ``[N, F, 3, S, S]``, wave ``[N, n]``) as ``spec`` shows them,
        from the decoded ``out`` or, with None, from the given clip itself."""
        data = self.cfg.data
        if out is None:
            frames, wave = given.get("video"), given.get("audio")
            image = None if wave is None else audio_image(wave, data)
        else:
            frames, wave, image = out.frames, out.wave, out.audio_image
        video = {
            "generated": frames,
            "given": given.get("video"),
            "audio image": None
            if image is None
            else image[:, None].expand(-1, data.num_frames, -1, -1, -1),
        }[spec.video]
        n = int(round(data.clip_seconds * data.sample_rate))
        num = len(video)
        audio = {
            "generated": wave,
            "given": given.get("audio"),
            "silent": torch.zeros(num, n, device=video.device),
        }[spec.audio]
        return video.float(), audio.float()

    def _result(self, task, frames, wave, seed, num, kw, has_audio, labels) -> Generation:
        settings = {k: v for k, v in kw.items() if k != "generator"}
        dec = self.codec.cfg.sample  # the decoder's settings (a distilled one's if loaded)
        settings.update(
            steps=settings["steps"] or self.cfg.sample.steps,
            sampler=settings["sampler"] or self.cfg.sample.sampler,
            decoder_sampler=dec.decoder_sampler,
            decoder_steps=settings.get("decoder_steps") or dec.decoder_steps,
        )
        return Generation(
            task=task,
            frames=frames.float().clamp(-1, 1),
            wave=wave.float().clamp(-1, 1),
            fps=self.cfg.data.fps,
            sample_rate=self.cfg.data.sample_rate,
            seeds=[seed] * num,
            settings=settings,
            has_audio=has_audio,
            labels=None if labels is None else labels.tolist(),
        )

    # -- saving --------------------------------------------------------------------------------

    @staticmethod
    def save(gen: Generation, out_dir: str | Path, start: int = 0) -> list[dict]:
        """Write ``{task}_{start + i:04d}.mp4`` per sample (H.264 + AAC) and a contact sheet of
        the batch; returns one record per sample (file, seed, settings) for the caller's JSON."""
        from mmldm.data.media import write_video
        from mmldm.viz import save_grid

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        records, rows = [], []
        for i in range(len(gen.frames)):
            path = out / f"{gen.task}_{start + i:04d}.mp4"
            write_video(
                path,
                gen.frames[i].permute(0, 2, 3, 1).cpu().numpy(),
                gen.fps,
                gen.wave[i].cpu().numpy() if gen.has_audio else None,
                gen.sample_rate if gen.has_audio else None,
            )
            step = max(1, gen.frames.shape[1] // 8)
            rows.append(list(gen.frames[i, ::step][:8]))
            records.append(
                {
                    "file": path.name,
                    "task": gen.task,
                    "seed": gen.seeds[i],
                    "batch_index": i,
                    "frames": gen.frames.shape[1],
                    "fps": gen.fps,
                    "audio_samples": gen.wave.shape[1] if gen.has_audio else 0,
                    "sample_rate": gen.sample_rate,
                    "settings": gen.settings,
                    **({"class_index": gen.labels[i]} if gen.labels else {}),
                }
            )
        save_grid(
            rows,
            out / f"{gen.task}_sheet_{start:04d}.png",
            [r["file"].removesuffix(".mp4") for r in records],
        )
        return records
