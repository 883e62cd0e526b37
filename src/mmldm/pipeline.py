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
from pathlib import Path

import torch

from mmldm.audio.mel import audio_image
from mmldm.checkpoint import checkpoint_fingerprint, load_checkpoint
from mmldm.codec import Codec, DecodedClips
from mmldm.config import Config
from mmldm.data.latents import LatentStats
from mmldm.diffusion.sampling import Generators
from mmldm.generation import Generation, save_generation
from mmldm.models.dit import MultiModalDiT
from mmldm.networks import dit_config
from mmldm.sampling import sample_latents
from mmldm.tasks import Task, task_spec
from mmldm.weights import CheckpointError, load_weights

log = logging.getLogger(__name__)


class MMLDMPipeline:
    """The generator (DiT and its latent statistics) and the codec of the autoencoder its
    latents came from; ``cfg`` is the generator's config (its data / autoencoder sections are
    the codec's)."""

    def __init__(self, dit: MultiModalDiT, stats: LatentStats, codec: Codec, cfg: Config) -> None:
        self.dit, self.stats, self.codec, self.cfg = dit, stats, codec, cfg

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

    # -- latent sampling (mmldm.sampling: noise, prepare, denoise, unpack) ------------------

    def sample_latents(self, num: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (z_a, z_v) ``[num, C, h, w]``: :func:`mmldm.sampling.sample_latents`
        with this pipeline's DiT and config (same keyword arguments)."""
        return sample_latents(self.dit, self.cfg, num, **kwargs)

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
        generator: Generators = None,
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
            seed: seeds one generator for the batch, unless ``generator`` is given.
            generator: a ``torch.Generator`` for the batch, or a list of ``num``: sample i's
                noise then comes from generator i alone, whatever batch it is drawn in.
            audio: ``[N]`` or ``[num, N]`` waveform at data.sample_rate (a2v, audio-continuation).
            video: ``[F, 3, S, S]`` or ``[num, F, 3, S, S]`` in [-1, 1] (v2a, video-continuation).
            clips: clips of a long / continued output (default sample.long_clips).
            labels: classes to generate (class-conditional generators only).
            decoder_steps: signal decoder steps (default sample.decoder_steps; a distilled
                decoder's K).
        """
        spec = task_spec(task)
        g = torch.Generator(self.device).manual_seed(seed) if generator is None else generator
        if isinstance(g, list) and len(g) != num:
            raise ValueError(f"{len(g)} generators for {num} samples")
        kw = dict(steps=steps, sampler=sampler, generator=g)
        kw.update(guidance_audio=guidance_audio, guidance_video=guidance_video)
        y = self._labels(labels, num)
        given = self._given(task, spec, num, audio, video)  # the given clip's signals
        z_given = self.encode(**given)  # and its normalised latents (None: not given)
        num_clips = (clips or self.cfg.sample.long_clips) if spec.continued else 1
        tracks, prev = [], {}
        for i in range(num_clips):
            if i == 0 and spec.continued and spec.given:  # the given clip opens the output
                z_a, z_v = z_given
                tracks.append(self._tracks(spec, given, None))
            else:  # a2v / v2a condition on the given clip, continuations on the previous one
                cond = {} if spec.continued else {"cond_a": z_given[0], "cond_v": z_given[1]}
                z_a, z_v = self.sample_latents(num, **cond, **prev, labels=y, **kw)
                out = self.decode(z_a, z_v, generator=g, steps=decoder_steps)
                tracks.append(self._tracks(spec, given, out))
            # the next clip follows this one in the modalities the task generates
            prev = {"prev_a": None if spec.given == "video" else z_a}
            prev["prev_v"] = None if spec.given == "audio" else z_v
        frames, wave = (torch.cat(track, 1) for track in zip(*tracks, strict=True))
        info = {**kw, "decoder_steps": decoder_steps}
        seeds = [x.initial_seed() for x in g] if isinstance(g, list) else [g.initial_seed()] * num
        return self._result(task, frames, wave, seeds, info, spec.audio != "silent", y)

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
            n = self.cfg.data.clip_samples
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
        n = data.clip_samples
        num = len(video)
        audio = {
            "generated": wave,
            "given": given.get("audio"),
            "silent": torch.zeros(num, n, device=video.device),
        }[spec.audio]
        return video.float(), audio.float()

    def _result(self, task, frames, wave, seeds, kw, has_audio, labels) -> Generation:
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
            seeds=seeds,
            settings=settings,
            has_audio=has_audio,
            labels=None if labels is None else labels.tolist(),
        )

    # -- saving --------------------------------------------------------------------------------

    save = staticmethod(save_generation)
