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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmldm.checkpoint import CheckpointError, checkpoint_fingerprint, load_checkpoint, load_weights
from mmldm.codec import Codec, LatentStats
from mmldm.config import Config
from mmldm.diffusion.sampling import guided, sample_loop
from mmldm.diffusion.schedule import add_noise, alphas_cumprod, make_sampler
from mmldm.models.dit import DiTInputs, MultiModalDiT
from mmldm.networks import dit_config

log = logging.getLogger(__name__)

TASKS = ("svg", "a2v", "v2a", "audio", "video", "long", "audio-continuation", "video-continuation")


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

    # -- latent sampling -----------------------------------------------------------------------

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
        is the clean latent of that modality: its part of x_t is the forward-noised condition
        at every step, and the other modality is guided with eq. 9."""
        sc, d = self.cfg.sample, self.dit
        g_a = sc.guidance_audio if guidance_audio is None else guidance_audio
        g_v = sc.guidance_video if guidance_video is None else guidance_video
        dev, dt = self.device, self.dtype
        shape_a, shape_v = self.cfg.audio_latent_shape, self.cfg.video_latent_shape
        x = torch.cat(
            [
                torch.randn((num, *shape_a), generator=generator, device=dev, dtype=dt).flatten(1),
                torch.randn((num, *shape_v), generator=generator, device=dev, dtype=dt).flatten(1),
            ],
            dim=1,
        )  # one state [num, |z_a| + |z_v|] for the scheduler
        fixed_noise = torch.randn(x.shape, generator=generator, device=dev, dtype=dt)
        abar = self.abar.to(dev)
        n_a = int(torch.tensor(shape_a).prod())

        def split(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return flat[:, :n_a].view(-1, *shape_a), flat[:, n_a:].view(-1, *shape_v)

        zeros_a = torch.zeros((num, *shape_a), device=dev, dtype=dt)
        zeros_v = torch.zeros((num, *shape_v), device=dev, dtype=dt)
        null_labels = None
        if labels is not None and d.num_classes:
            null_labels = torch.full_like(labels, d.num_classes)
        fixed_a, fixed_v = split(fixed_noise)

        def model_fn(flat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            z_a, z_v = split(flat)
            if cond_a is not None:  # the given audio, noised to this step (sec. 3.3)
                z_a = add_noise(cond_a, fixed_a, t, abar)
            if cond_v is not None:
                z_v = add_noise(cond_v, fixed_v, t, abar)
            inp = DiTInputs(
                z_a,
                z_v,
                t,
                cond_a=cond_a if cond_a is not None else zeros_a,
                cond_v=cond_v if cond_v is not None else zeros_v,
                labels=labels,
                prev_a=prev_a,
                prev_v=prev_v,
            )
            out_a, out_v = d(inp)
            conditioned = cond_a is not None or cond_v is not None or labels is not None
            if conditioned and (g_a != 1.0 or g_v != 1.0):
                null = DiTInputs(
                    z_a,
                    z_v,
                    t,
                    cond_a=zeros_a,
                    cond_v=zeros_v,
                    labels=null_labels,
                    prev_a=prev_a,
                    prev_v=prev_v,
                )
                na, nv = d(null)
                out_a, out_v = guided(out_a, na, g_a), guided(out_v, nv, g_v)
            return torch.cat([out_a.flatten(1), out_v.flatten(1)], dim=1)

        scheduler = make_sampler(self.cfg.diffusion, sampler or sc.sampler)
        out = sample_loop(
            model_fn, x, scheduler, steps or sc.steps, eta=sc.eta, generator=generator
        )
        z_a, z_v = split(out)
        return (cond_a if cond_a is not None else z_a), (cond_v if cond_v is not None else z_v)

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
        """Generate ``num`` samples of ``task``.

        Args:
            audio: ``[N]`` or ``[num, N]`` waveform at data.sample_rate (a2v, audio-continuation).
            video: ``[F, 3, S, S]`` or ``[num, F, 3, S, S]`` in [-1, 1] (v2a, video-continuation).
            clips: clips of a long / continued output (default sample.long_clips).
            labels: classes to generate (class-conditional generators only).
            decoder_steps: signal decoder steps (default sample.decoder_steps; a distilled
                decoder's K).
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        data = self.cfg.data
        dev = self.device
        g = torch.Generator(dev).manual_seed(seed)
        kw = dict(
            steps=steps,
            sampler=sampler,
            guidance_audio=guidance_audio,
            guidance_video=guidance_video,
            generator=g,
        )
        info = {**kw, "decoder_steps": decoder_steps}  # what the result records
        y = None
        if labels is not None:
            if not self.dit.num_classes:
                raise ValueError("this generator is not class-conditional (dit.class_conditional)")
            y = (
                torch.tensor(labels, device=dev).expand(num)
                if len(labels) == 1
                else torch.tensor(labels, device=dev)
            )
        a_in = (
            None if audio is None else (audio if audio.dim() == 2 else audio[None]).expand(num, -1)
        )
        v_in = (
            None
            if video is None
            else (video if video.dim() == 5 else video[None]).expand(num, -1, -1, -1, -1)
        )
        needs = {"a2v": a_in, "audio-continuation": a_in, "v2a": v_in, "video-continuation": v_in}
        if task in needs and needs[task] is None:
            raise ValueError(f"task {task} needs " + ("--audio" if "a" == task[0] else "--video"))
        k = clips or self.cfg.sample.long_clips
        n = int(round(data.clip_seconds * data.sample_rate))

        if task in ("svg", "audio", "video", "a2v", "v2a"):
            cond_a, cond_v = self.encode(
                video=v_in if task == "v2a" else None, audio=a_in if task == "a2v" else None
            )
            z_a, z_v = self.sample_latents(num, cond_a=cond_a, cond_v=cond_v, labels=y, **kw)
            out = self.decode(z_a, z_v, generator=g, steps=decoder_steps)
            frames, wave = out.frames, out.wave
            if task == "a2v":
                wave = a_in[:, :n].float()  # the given audio, unchanged
            if task == "v2a":
                frames = v_in.float()  # the given frames, unchanged
            if task == "audio":
                frames = out.audio_image[:, None].expand(-1, data.num_frames, -1, -1, -1)
            return self._result(
                task, frames, wave, seed, num, info, has_audio=task != "video", labels=y
            )

        # long and continuations: clip after clip, each conditioned on the previous latents
        cond_audio_only = task == "audio-continuation"
        cond_video_only = task == "video-continuation"
        frames_out, waves_out = [], []
        if task == "long":
            z_a, z_v = self.sample_latents(num, labels=y, **kw)
            out = self.decode(z_a, z_v, generator=g, steps=decoder_steps)
            frames_out.append(out.frames)
            waves_out.append(out.wave)
        else:
            z_a, z_v = self.encode(
                video=v_in if cond_video_only else None, audio=a_in if cond_audio_only else None
            )
            if cond_audio_only:
                waves_out.append(a_in[:, :n].float())
                frames_out.append(self._audio_frames(a_in[:, :n]))
            else:
                frames_out.append(v_in.float())
                waves_out.append(torch.zeros(num, n, device=dev))
        for _ in range(k - 1):
            prev_a = None if cond_video_only else z_a
            prev_v = None if cond_audio_only else z_v
            z_a, z_v = self.sample_latents(num, prev_a=prev_a, prev_v=prev_v, labels=y, **kw)
            out = self.decode(z_a, z_v, generator=g, steps=decoder_steps)
            frames_out.append(
                out.audio_image[:, None].expand(-1, data.num_frames, -1, -1, -1)
                if cond_audio_only
                else out.frames
            )
            waves_out.append(torch.zeros_like(out.wave) if cond_video_only else out.wave)
        return self._result(
            task,
            torch.cat(frames_out, 1),
            torch.cat(waves_out, 1),
            seed,
            num,
            info,
            has_audio=not cond_video_only,
            labels=y,
        )

    def _audio_frames(self, audio: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` audio of one clip -> its audio image as a video track ``[N, F, 3, S, S]``
        (audio tasks show the spectrogram where there is no generated video)."""
        from mmldm.audio.mel import audio_image

        image = audio_image(audio, self.cfg.data)
        return image[:, None].expand(-1, self.cfg.data.num_frames, -1, -1, -1)

    def _result(self, task, frames, wave, seed, num, kw, *, has_audio, labels) -> Generation:
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
